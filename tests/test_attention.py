"""Attention against torch's scaled_dot_product_attention (float32), both code paths.

The tiled CPU path (`_attention_tiled`, taken for S*T >= 128*128 on one device) and the dense
path must both equal the reference: GQA head mapping as HF's repeat_kv, causal + padding masks,
and a fully masked (padding) query row giving the plain average of the values.
"""

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from mir_jax.models import layers


def reference(q, k, v, mask):
    """torch SDPA with HF's repeat_kv head mapping. q [B,S,H,Dh]; k, v [B,T,KVH,Dh]; mask [B,S,T]."""
    g = q.shape[2] // k.shape[2]
    tq, tk, tv = (torch.from_numpy(np.asarray(x)).permute(0, 2, 1, 3) for x in (q, k, v))
    tk, tv = tk.repeat_interleave(g, dim=1), tv.repeat_interleave(g, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.from_numpy(mask)[:, None])
    return out.permute(0, 2, 1, 3).numpy()


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (6, 1)])
@pytest.mark.parametrize("tiled", [True, False])
def test_attention_matches_torch_sdpa(heads, kv_heads, tiled, monkeypatch):
    rng = np.random.default_rng(heads * 10 + kv_heads)
    b, s, dh = 3, 160, 16
    q = rng.standard_normal((b, s, heads, dh)).astype(np.float32)
    k = rng.standard_normal((b, s, kv_heads, dh)).astype(np.float32)
    v = rng.standard_normal((b, s, kv_heads, dh)).astype(np.float32)
    lengths = np.array([s, 97, 40])
    valid = np.arange(s)[None] < lengths[:, None]
    mask = np.tril(np.ones((s, s), bool))[None] & valid[:, None, :] & valid[:, :, None]
    monkeypatch.setattr(layers, "_tile_attention", lambda s, t: tiled)
    ours = np.asarray(layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask)))
    expected = reference(q, k, v, mask)
    for row in range(b):
        n = lengths[row]
        np.testing.assert_allclose(ours[row, :n], expected[row, :n], atol=2e-6, rtol=1e-5)
        # A fully masked query row averages all values uniformly (no NaN).
        padded = ours[row, n:]
        average = np.repeat(v[row].mean(axis=0), heads // kv_heads, axis=0)
        np.testing.assert_allclose(padded, np.broadcast_to(average, padded.shape), atol=1e-5)


def test_tiled_path_is_taken_for_long_sequences_on_one_cpu_device():
    assert layers._tile_attention(512, 512)
    assert not layers._tile_attention(1, 512)  # a decoding step stays dense
