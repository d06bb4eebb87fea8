"""Attention against independent references: torch's scaled_dot_product_attention (float32) for
the dense paths, and a float64 torch softmax attention, with its mask built here in NumPy, for
the blockwise path, the cuDNN wrapper and the Pallas splash kernel (in its interpreter).

GQA head mapping as HF's repeat_kv; causal + key padding + packed segments; lengths not
divisible by the block sizes; gradients for q, k and v. Rows with no key to attend to
(padding queries) are implementation-defined but finite; their cotangent is zero here, as
the model's losses make it.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mir_jax.models import attention as attn
from mir_jax.models import layers
from mir_jax.models.config import LlavaConfig
from mir_jax.sharding import make_mesh, use_mesh

# Every check here compares with torch attention.
torch = pytest.importorskip(
    "torch", reason="torch attention is the reference here; pip install torch (a CPU build: see README)")


def reference(q, k, v, mask):
    """torch SDPA with HF's repeat_kv head mapping. q [B,S,H,Dh]; k, v [B,T,KVH,Dh]; mask [B,S,T]."""
    g = q.shape[2] // k.shape[2]
    tq, tk, tv = (torch.from_numpy(np.asarray(x)).permute(0, 2, 1, 3) for x in (q, k, v))
    tk, tv = tk.repeat_interleave(g, dim=1), tv.repeat_interleave(g, dim=1)
    out = torch.nn.functional.scaled_dot_product_attention(tq, tk, tv, attn_mask=torch.from_numpy(mask)[:, None])
    return out.permute(0, 2, 1, 3).numpy()


@pytest.mark.parametrize("heads,kv_heads", [(4, 4), (8, 2), (6, 1)])
def test_dense_attention_matches_torch_sdpa(heads, kv_heads):
    rng = np.random.default_rng(heads * 10 + kv_heads)
    b, s, dh = 3, 160, 16
    q = rng.standard_normal((b, s, heads, dh)).astype(np.float32)
    k = rng.standard_normal((b, s, kv_heads, dh)).astype(np.float32)
    v = rng.standard_normal((b, s, kv_heads, dh)).astype(np.float32)
    lengths = np.array([s, 97, 40])
    valid = np.arange(s)[None] < lengths[:, None]
    mask = np.tril(np.ones((s, s), bool))[None] & valid[:, None, :] & valid[:, :, None]
    ours = np.asarray(layers.attention(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), jnp.asarray(mask),
                                       implementation="dense"))
    expected = reference(q, k, v, mask)
    for row in range(b):
        n = lengths[row]
        np.testing.assert_allclose(ours[row, :n], expected[row, :n], atol=2e-6, rtol=1e-5)
        # A fully masked query row averages all values uniformly (no NaN).
        padded = ours[row, n:]
        average = np.repeat(v[row].mean(axis=0), heads // kv_heads, axis=0)
        np.testing.assert_allclose(padded, np.broadcast_to(average, padded.shape), atol=1e-5)


# ----------------------------------------------------------------------------------------------
# Blockwise, cuDNN wrapper, Pallas: against float64 torch with a NumPy-built mask
# ----------------------------------------------------------------------------------------------
def numpy_mask(s, t, *, causal, offset=0, segments=None, valid=None):
    """bool [B, S, T] built independently of `attention.Mask`: key j visible to query i iff
    (j <= offset + i if causal), same nonzero segment, key valid."""
    i, j = np.arange(s)[:, None], np.arange(t)[None, :]
    m = np.ones((1, s, t), bool)
    if causal:
        m = m & (j <= offset + i)[None]
    if segments is not None:
        qs, ks = segments
        m = m & (qs[:, :, None] == ks[:, None, :]) & (ks[:, None, :] != 0)
    if valid is not None:
        m = m & valid[:, None, :]
    return m


def torch_reference(q, k, v, mask, cotangent):
    """float64 softmax attention (repeat_kv GQA) and the gradients of sum(out * cotangent)."""
    g = q.shape[2] // k.shape[2]
    tq, tk, tv = (torch.tensor(np.asarray(x), dtype=torch.float64, requires_grad=True) for x in (q, k, v))
    qh, kh, vh = tq.permute(0, 2, 1, 3), tk.permute(0, 2, 1, 3), tv.permute(0, 2, 1, 3)
    kh, vh = kh.repeat_interleave(g, dim=1), vh.repeat_interleave(g, dim=1)
    scores = qh @ kh.transpose(-1, -2) / np.sqrt(q.shape[-1])
    scores = scores.masked_fill(~torch.from_numpy(mask)[:, None], torch.finfo(torch.float64).min)
    out = (torch.softmax(scores, -1) @ vh).permute(0, 2, 1, 3)
    (out * torch.from_numpy(np.asarray(cotangent, np.float64))).sum().backward()
    return out.detach().numpy(), [x.grad.numpy() for x in (tq, tk, tv)]


def case(seed, b, s, t, h, kvh, dh):
    rng = np.random.default_rng(seed)
    q = rng.standard_normal((b, s, h, dh)).astype(np.float32)
    k = rng.standard_normal((b, t, kvh, dh)).astype(np.float32)
    v = rng.standard_normal((b, t, kvh, dh)).astype(np.float32)
    return rng, q, k, v


def packed_segments(b, s):
    """Row 0: three packed examples and padding; row 1: one example then padding; the rest: full."""
    seg = np.ones((b, s), np.int32)
    seg[0] = 0
    seg[0, : s // 3], seg[0, s // 3: s // 2], seg[0, s // 2: s - 5] = 1, 2, 3
    seg[1, s - s // 4:] = 0
    return seg


def check(fn, q, k, v, mask_obj, mask_np, rng, *, atol=1e-5, rtol=1e-5):
    """fn(q, k, v, mask) forward and gradients vs the float64 reference, on rows with a key."""
    rows = mask_np.any(-1)
    if rows.shape[0] == 1:
        rows = np.broadcast_to(rows, q.shape[:2])
    cot = (rng.standard_normal(q.shape) * rows[:, :, None, None]).astype(np.float32)
    f = jax.jit(lambda q, k, v, m: jax.value_and_grad(
        lambda q, k, v: (jnp.sum(fn(q, k, v, m) * cot), fn(q, k, v, m)), argnums=(0, 1, 2), has_aux=True)(q, k, v))
    (_, out), grads = f(jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask_obj)
    ref_out, ref_grads = torch_reference(q, k, v, np.array(np.broadcast_to(mask_np, (q.shape[0],) + mask_np.shape[1:])), cot)
    out = np.asarray(out)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out[rows], ref_out[rows], atol=atol, rtol=rtol)
    for name, ours, ref in zip("qkv", grads, ref_grads):
        assert np.isfinite(np.asarray(ours)).all(), name
        np.testing.assert_allclose(np.asarray(ours), ref, atol=atol, rtol=rtol, err_msg=f"d{name}")


def blockwise(bq, bkv, head_loop=None):
    return lambda q, k, v, m: attn.blockwise_attention(q, k, v, m, block_q=bq, block_kv=bkv, head_loop=head_loop)


# Blocks of 16 queries x 8 keys (odd length 45: padded blocks, loops over both), and the looped
# path's default blocks (one block each way: no loop, a plain softmax). Looped slices this small
# are unrolled (each query block against its visible keys); unroll=False forces the loops.
@pytest.mark.parametrize("bq,bkv", [(16, 8), (None, None)])
@pytest.mark.parametrize("head_loop,unroll", [(True, True), (True, False), (False, False)])
def test_blockwise_matches_reference_causal_segments_padding_gqa(bq, bkv, head_loop, unroll, monkeypatch):
    if not unroll:
        monkeypatch.setattr(attn, "CPU_UNROLL_MAX_SCORES", 0)
    # 6 query heads on 2 kv heads.
    b, s, h, kvh, dh = 3, 45, 6, 2, 16
    rng, q, k, v = case(0, b, s, s, h, kvh, dh)
    seg = packed_segments(b, s)
    valid = np.ones((b, s), bool)
    valid[2, 30:] = False  # key padding (attention_mask) on top of the segments in row 2
    mask = attn.Mask(causal=True, q_segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(seg),
                     kv_valid=jnp.asarray(valid))
    ref = numpy_mask(s, s, causal=True, segments=(seg, seg), valid=valid)
    check(blockwise(bq, bkv, head_loop), q, k, v, mask, ref, rng)


@pytest.mark.parametrize("head_loop", [True, False])
def test_blockwise_matches_reference_decoding_offset_and_explicit_mask(head_loop):
    # KV-cache shapes: 13 queries at slots 28..40 of 41 keys (blocks: 2 x 8 queries, 3 x 16
    # keys), traced offset, key padding (left); then a bidirectional call with an explicit
    # [B, S, T] mask array.
    b, s, t, h, kvh, dh = 2, 13, 41, 4, 1, 8
    rng, q, k, v = case(1, b, s, t, h, kvh, dh)
    valid = np.ones((b, t), bool)
    valid[1, :6] = False
    mask = attn.Mask(causal=True, q_offset=jnp.int32(28), kv_valid=jnp.asarray(valid))
    check(blockwise(8, 16, head_loop), q, k, v, mask, numpy_mask(s, t, causal=True, offset=28, valid=valid), rng)
    dense = rng.random((b, s, t)) < 0.6
    check(blockwise(8, 16, head_loop), q, k, v, jnp.asarray(dense), dense, rng)
    check(blockwise(None, None, head_loop), q, k, v, jnp.asarray(dense), dense, rng)  # one block each way


def test_cache_attention_over_a_head_major_cache_matches_reference():
    # The decoding step's attention: queries at a traced slot of a [B, KVH, T, Dh] cache, key
    # padding on the left, GQA (3 query heads a kv head); one query, then three.
    b, t, h, kvh, dh = 3, 41, 6, 2, 16
    for s, offset in ((1, 30), (3, 37)):
        rng, q, k, v = case(2 + s, b, s, t, h, kvh, dh)
        valid = np.ones((b, t), bool)
        valid[1, :9], valid[2, :20] = False, False
        mask = attn.Mask(causal=True, q_offset=jnp.int32(offset), kv_valid=jnp.asarray(valid))
        ref = numpy_mask(s, t, causal=True, offset=offset, valid=valid)
        check(lambda q, k, v, m: attn.cache_attention(q, k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3), m),
              q, k, v, mask, ref, rng)


def test_cudnn_wrapper_arguments_through_xla():
    # The cuDNN path's call (BTNH layout, GQA, is_causal or a [B, 1, S, T] mask) run through
    # jax.nn.dot_product_attention's XLA implementation: only the kernel itself is not run here.
    b, s, h, kvh, dh = 2, 33, 4, 2, 8
    rng, q, k, v = case(2, b, s, s, h, kvh, dh)
    fn = lambda q, k, v, m: attn.cudnn_attention(q, k, v, m, implementation="xla")
    check(fn, q, k, v, attn.Mask(causal=True), numpy_mask(s, s, causal=True), rng)
    seg = packed_segments(b, s)
    mask = attn.Mask(causal=True, q_segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(seg))
    check(fn, q, k, v, mask, numpy_mask(s, s, causal=True, segments=(seg, seg)), rng)


def test_pallas_splash_kernel_in_interpreter_matches_reference():
    # 200 tokens (padded to 256 = 2 blocks of 128 inside), causal + packed segments + GQA.
    b, s, h, kvh, dh = 2, 200, 4, 2, 32
    rng, q, k, v = case(3, b, s, s, h, kvh, dh)
    seg = packed_segments(b, s)
    mask = attn.Mask(causal=True, q_segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(seg))
    fn = lambda q, k, v, m: attn.attention(q, k, v, m, implementation="pallas")  # interpreter on CPU
    check(fn, q, k, v, mask, numpy_mask(s, s, causal=True, segments=(seg, seg)), rng, atol=2e-5)


def test_blockwise_and_pallas_under_a_mesh_batch_and_heads_sharded():
    # 8 CPU devices as (data 2, fsdp 2, tensor 2): batch over data x fsdp, heads over tensor.
    b, s, h, kvh, dh = 4, 40, 4, 2, 8
    rng, q, k, v = case(4, b, s, s, h, kvh, dh)
    seg = packed_segments(b, s)
    mask_np = numpy_mask(s, s, causal=True, segments=(seg, seg))
    mesh = make_mesh((2, 2, 2))
    with use_mesh(mesh):
        mask = attn.Mask(causal=True, q_segment_ids=jnp.asarray(seg), kv_segment_ids=jnp.asarray(seg))
        check(blockwise(16, 16), q, k, v, mask, mask_np, rng)
        out = jax.jit(lambda q, k, v, m: attn.attention(q, k, v, m, implementation="pallas"))(
            jnp.asarray(q), jnp.asarray(k), jnp.asarray(v), mask)
    rows = mask_np.any(-1)
    np.testing.assert_allclose(np.asarray(out)[rows], reference(q, k, v, mask_np)[rows], atol=2e-5)


def test_blockwise_never_holds_s_by_s_scores():
    # XLA's own accounting of the compiled forward + backward: dense needs the [H, S, S] float32
    # scores (and their backward residuals); blockwise stays within a small multiple of its tiles.
    b, s, h, dh = 1, 2048, 2, 16
    x = jax.ShapeDtypeStruct((b, s, h, dh), jnp.float32)
    mask = attn.Mask(causal=True)

    def temp_bytes(fn):
        step = jax.grad(lambda q, k, v: jnp.sum(fn(q, k, v, mask)), argnums=(0, 1, 2))
        return jax.jit(step).lower(x, x, x).compile().memory_analysis().temp_size_in_bytes

    scores = b * h * s * s * 4
    dense = temp_bytes(attn.dense_attention)
    block = temp_bytes(blockwise(256, 256))
    assert dense >= scores  # the reference point: dense does materialize them
    assert block < scores / 8, (block, scores)


# ----------------------------------------------------------------------------------------------
# Selection
# ----------------------------------------------------------------------------------------------
def test_selection_by_backend_and_forcing():
    def q_k(s, t, dtype=jnp.bfloat16, dh=128):
        return jax.ShapeDtypeStruct((1, s, 8, dh), dtype), jax.ShapeDtypeStruct((1, t, 8, dh), dtype)

    sel = attn.select_implementation
    long_, short = q_k(4096, 4096), q_k(512, 512)
    assert sel("auto", *long_, backend="gpu") == "cudnn"
    assert sel("auto", *q_k(4096, 4096, jnp.float32), backend="gpu") == "blockwise"  # cuDNN: no fp32
    assert sel("auto", *q_k(512, 512, dh=160), backend="gpu") == "dense"  # head_dim > 128
    assert sel("auto", *long_, attn.Mask(causal=True), backend="tpu") == "pallas"
    traced = attn.Mask(causal=True, q_offset=jax.ShapeDtypeStruct((), jnp.int32))
    assert not attn.pallas_supports(traced)
    assert sel("auto", *long_, attn.Mask(dense=jnp.ones((1, 1, 1), bool)), backend="tpu") == "blockwise"
    # One CPU device: the looped blockwise path from 128 x 128 scores a head.
    assert sel("auto", *long_, backend="cpu") == "blockwise"
    assert sel("auto", *short, backend="cpu") == "blockwise"
    assert sel("auto", *q_k(128, 128), backend="cpu") == "blockwise"
    assert sel("auto", *q_k(127, 128), backend="cpu") == "dense"
    assert attn.head_loop_default()
    with use_mesh(make_mesh((2, 2, 2))):  # a CPU mesh: batched blockwise from 1024 keys only
        assert not attn.head_loop_default()
        assert sel("auto", *short, backend="cpu") == "dense"
        assert sel("auto", *q_k(1024, 1024), backend="cpu") == "blockwise"
    assert sel("auto", *q_k(1, 4096), backend="gpu") == "dense"  # decoding step
    for name in ("dense", "blockwise", "cudnn", "pallas"):
        assert sel(name, *short, backend="cpu") == name
    with pytest.raises(ValueError, match="flash"):
        sel("flash", *short)
    with pytest.raises(ValueError, match="attention 'flash' not in"):
        LlavaConfig.tiny(attention="flash")
