"""Batched greedy decoding: our `mir_jax.models.generate.generate` (jitted prefill, then the whole
decoding loop as one jitted `while_loop` with the KV cache updated in place; what
`mir_jax.evals.predict.generate_texts` calls) against HF transformers'
`LlavaForConditionalGeneration.generate`, same weights, same prompts, one process.

Config (issue: generation benchmark): the benchmarks' "small" LLaVA (`train_step.hf_config`: CLIP
ViT 4 layers x 256 at 224 px -> 256 image tokens, Llama 4 layers x 512, vocab 32k; 49.2M
parameters), float32, random weights (a random HF model saved with `save_pretrained`, loaded with
`mir_jax.hf.load_pretrained`). Batch 16 prompts of different lengths (BOS, text, one image, text),
left-padded; 32 new tokens, greedy, EOS disabled on both sides (HF `eos_token_id=None`, ours
`eos_token_id=-1`), so both make exactly 32 tokens a row. The token arrays must agree.

Timed interleaved (ours, HF, ...; best of `--repeats` after one untimed warm-up, which holds our
compilation): the whole call with `--new_tokens` tokens, and the same call with 1 new token
("prefill": the prompt forward plus the first token's argmax). Decode = whole - prefill, i.e.
the remaining new_tokens - 1 steps.

EXPERIMENT (not project code; `--no-experiments` skips it): "head-major", ours' prefill, then the
decoding loop with the cache laid out [L, B, KVH, T, Dh] (transposed once after the prefill) and
the one-query attention as two batched dots. Its decode time is whole call - ours' 1-token call.
It must give the same tokens as HF.

    python benchmarks/generation.py [--batch 16] [--new_tokens 32] [--preset small] [--repeats 3]
"""

from __future__ import annotations

import argparse
import functools
import os
import platform
import tempfile

import numpy as np
from timing import interleaved_best
from train_step import hf_config

VOCAB, IMAGE_TOKEN, PAD, BOS = 32000, 31999, 0, 1


def make_prompts(b: int, k: int, vocab: int, image_token: int):
    """Left-padded rows of different lengths: BOS, 2-12 text tokens, K image tokens, 4 + 6i text
    tokens. Returns (input_ids [B, S] int64, attention_mask [B, S] int64)."""
    rng = np.random.default_rng(0)
    rows = []
    for i in range(b):
        pre = rng.integers(3, vocab - 1, 2 + (7 * i) % 11)
        post = rng.integers(3, vocab - 1, 4 + 6 * i)
        rows.append(np.concatenate([[BOS], pre, np.full(k, image_token), post]))
    s = max(len(r) for r in rows)
    ids = np.full((b, s), PAD, np.int64)
    am = np.zeros((b, s), np.int64)
    for i, r in enumerate(rows):
        ids[i, s - len(r):], am[i, s - len(r):] = r, 1
    return ids, am


# ------------------------------------------------------------------------------------------------
# EXPERIMENT: a proposal for mir_jax/models/generate.py, which this benchmark does not change.
# Greedy only, one device, the same `_prefill`; EOS/pad bookkeeping as `generate`.
#   "head-major": generate's in-place decoding loop with the cache transposed once after the
#                 prefill to [L, B, KVH, T, Dh] and the one-query attention as two batched dots
#                 over (B, KVH) (GQA: the query heads grouped [KVH, G], as HF's repeat_kv). In
#                 the [B, T, KVH, Dh] layout the model's attention (and a plain einsum) spends
#                 ~10x longer on the same reads.
# ------------------------------------------------------------------------------------------------
def _attend_head_major(q, ck, cv, key_valid, index):
    """q [B, 1, H, Dh]; ck/cv [B, KVH, T, Dh] -> [B, 1, H, Dh] (keys <= index and valid)."""
    import jax
    import jax.numpy as jnp

    b, _, h, dh = q.shape
    kvh, t = ck.shape[1], ck.shape[2]
    qg = q.reshape(b, kvh, h // kvh, dh)
    scores = jnp.einsum("bkgd,bktd->bkgt", qg, ck.astype(q.dtype), preferred_element_type=jnp.float32)
    valid = key_valid[:, None, None, :] & (jnp.arange(t) <= index)
    probs = jax.nn.softmax(jnp.where(valid, scores / np.sqrt(dh), -jnp.inf), axis=-1)
    out = jnp.einsum("bkgt,bktd->bkgd", probs.astype(q.dtype), cv.astype(q.dtype))
    return out.reshape(b, 1, h, dh)


def _step_inplace(lm, tok, pos, key_valid, cache, index, head_major: bool):
    """One token through the decoder, cache updated in place -> (logits [B, V], cache)."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from mir_jax.models.attention import Mask
    from mir_jax.models.layers import apply_rope, attention, rope_cos_sin

    cfg = lm.cfg
    cos, sin = rope_cos_sin(pos[:, None], cfg.head_dim, cfg.rope_theta)
    mask = Mask(causal=True, q_offset=index, kv_valid=key_valid)
    graphdef, layers = nnx.split(lm.layers)

    def body(carry, inp):
        h, (ck, cv) = carry
        i, layer = inp[0], nnx.merge(graphdef, inp[1])
        if layer.moca is not None:
            raise NotImplementedError("experiment: no MoCa")
        a = layer.self_attn
        y = layer.input_layernorm(h)
        q = apply_rope(a.q_proj(y), cos, sin)
        k, v = apply_rope(a.k_proj(y), cos, sin), a.v_proj(y)  # [B, 1, KVH, Dh]
        if head_major:
            k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)  # [B, KVH, 1, Dh]
            at = (i, 0, 0, index, 0)
        else:
            at = (i, 0, index, 0, 0)
        ck = jax.lax.dynamic_update_slice(ck, k[None].astype(ck.dtype), at)
        cv = jax.lax.dynamic_update_slice(cv, v[None].astype(cv.dtype), at)
        if head_major:
            out = _attend_head_major(q, ck[i], cv[i], key_valid, index)
        else:
            out = attention(q, ck[i].astype(q.dtype), cv[i].astype(q.dtype), mask,
                            implementation=a.attention_impl)
        h = h + a.o_proj(out)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
        return (h, (ck, cv)), None

    (h, cache), _ = jax.lax.scan(body, (lm.embed(tok[:, None]), cache), (jnp.arange(cfg.num_layers), layers))
    return lm.logits(lm.norm(h))[:, 0], cache


def _decode_loop_fn(variant: str):
    import jax
    import jax.numpy as jnp
    from flax import nnx

    @functools.partial(jax.jit, static_argnums=(0, 6))
    def decode_loop(graphdef, state, logits, pos, key_valid, cache, n, start, eos, pad):
        """logits [B, V] of the prompt's last slot; start: the first cache slot to write (= S)."""
        lm = nnx.merge(graphdef, state).language_model
        b = logits.shape[0]
        tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
        done = jnp.isin(tok, eos)
        out = jnp.full((b, n), pad, jnp.int32).at[:, 0].set(tok)
        if variant == "head-major":
            cache = tuple(jnp.swapaxes(c, 2, 3) for c in cache)  # [L, B, KVH, T, Dh], once

        def cond(c):
            i, _, _, _, done, _ = c
            return (i < n) & ~jnp.all(done)

        def body(c):
            i, tok, pos, cache, done, out = c
            index = start + i - 1  # token i-1 goes to slot S + i - 1 and predicts token i
            pos = pos + 1
            logits, cache = _step_inplace(lm, tok, pos, key_valid, cache, index,
                                          head_major=variant == "head-major")
            new = jnp.where(done, pad, jnp.argmax(logits, axis=-1).astype(jnp.int32))
            out = jax.lax.dynamic_update_slice(out, new[:, None], (0, i))
            return i + 1, new, pos, cache, done | jnp.isin(new, eos), out

        return jax.lax.while_loop(cond, body, (jnp.int32(1), tok, pos, cache, done, out))[-1]

    return decode_loop


EXPERIMENTS = ("head-major",)
_LOOPS = {}


def generate_on_device(model, input_ids, pixel_values, image_mask, attention_mask, *, max_new_tokens: int,
                       eos_token_id: int, pad_token_id: int, variant: str) -> np.ndarray:
    """EXPERIMENT: `generate` (greedy, one device) with the decoding loop as one `while_loop`."""
    import jax.numpy as jnp
    from flax import nnx

    from mir_jax.models.generate import _prefill, init_cache

    if variant not in _LOOPS:
        _LOOPS[variant] = _decode_loop_fn(variant)
    input_ids = np.asarray(input_ids, np.int32)
    b, s = input_ids.shape
    am = np.asarray(attention_mask) != 0
    key_valid = jnp.asarray(np.concatenate([am, np.ones((b, max_new_tokens), bool)], axis=1))
    graphdef, state = nnx.split(model)
    cache = init_cache(model, b, s + max_new_tokens)
    logits, pos, cache = _prefill(graphdef, state, jnp.asarray(input_ids), jnp.asarray(pixel_values),
                                  jnp.asarray(image_mask), key_valid, cache)
    out = _LOOPS[variant](graphdef, state, logits, pos, key_valid, cache, max_new_tokens, jnp.int32(s),
                          jnp.asarray([eos_token_id], jnp.int32), jnp.int32(pad_token_id))
    return np.asarray(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--preset", choices=("small", "1b"), default="small", help="see train_step.hf_config")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds after one warm-up round")
    ap.add_argument("--no-experiments", action="store_true", help="skip the decode-loop experiments")
    args = ap.parse_args()

    import jax
    import torch
    from transformers import LlavaForConditionalGeneration

    from mir_jax.hf import load_pretrained
    from mir_jax.models.generate import generate

    b, n = args.batch, args.new_tokens
    if n < 2:
        ap.error("--new_tokens must be at least 2 (decode = whole call - the 1-token call)")
    hf_cfg = hf_config(args.preset, VOCAB, IMAGE_TOKEN)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        hf = LlavaForConditionalGeneration(hf_cfg).eval()
        hf.save_pretrained(tmp)
        cfg, model = load_pretrained(tmp)
    hf.generation_config.eos_token_id = None
    n_params = sum(p.numel() for p in hf.parameters())
    k = cfg.num_image_tokens
    ids, am = make_prompts(b, k, VOCAB, IMAGE_TOKEN)
    s = ids.shape[1]
    size = hf_cfg.vision_config.image_size
    px = np.random.default_rng(1).standard_normal((b, size, size, 3)).astype(np.float32)

    j_px, j_mask = px[:, None], np.ones((b, 1), bool)
    t_ids, t_am = torch.tensor(ids), torch.tensor(am)
    t_px = torch.tensor(px).permute(0, 3, 1, 2).contiguous()

    def ours(m):
        return generate(model, ids, j_px, j_mask, am, max_new_tokens=m, eos_token_id=-1, pad_token_id=PAD)

    def experiment(variant, m):
        return generate_on_device(model, ids, j_px, j_mask, am, max_new_tokens=m, eos_token_id=-1,
                                  pad_token_id=PAD, variant=variant)

    def theirs(m):
        with torch.no_grad():
            out = hf.generate(input_ids=t_ids, attention_mask=t_am, pixel_values=t_px, max_new_tokens=m,
                              do_sample=False, eos_token_id=None, pad_token_id=PAD)
        return out[:, s:].numpy()

    # Same tokens first (this also compiles ours and warms up HF).
    want = theirs(n)
    assert want.shape == (b, n), want.shape
    sides = {"ours": ours, "HF": theirs}
    if not args.no_experiments:
        sides.update({x: functools.partial(experiment, x) for x in EXPERIMENTS})
    for x, fn in sides.items():
        equal = float(np.mean(fn(n) == want))
        assert equal == 1.0, f"{x} and HF differ: {equal:.1%} of the tokens are equal"
    names = list(sides)
    # Whole calls of every side, then the 1-token calls of ours and HF; the experiments share
    # ours' `_prefill` (same shapes), so their decode time is taken against ours' 1-token call.
    fns = [functools.partial(sides[x], n) for x in names] + [functools.partial(sides[x], 1) for x in ("ours", "HF")]
    times = interleaved_best(args.repeats, *fns, warmup=True)
    full = dict(zip(names, times))
    pre = {x: times[len(names) + (x == "HF")] for x in names}

    print(f"config: {args.preset} LLaVA ({n_params / 1e6:.1f}M parameters; ViT {cfg.vision.num_layers}x"
          f"{cfg.vision.hidden_size} @{size}, {k} image tokens; Llama {cfg.text.num_layers}x"
          f"{cfg.text.hidden_size}, vocab {cfg.text.vocab_size}), float32; batch {b}, prompts "
          f"{int(am.sum(1).min())}-{s} tokens (left-padded to {s}), {n} new tokens, greedy, no EOS")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__} ({torch.get_num_threads()} threads, "
          f"torch's default here), transformers {__import__('transformers').__version__}")
    print(f"tokens: every side == HF on all {b}x{n}; best of {args.repeats}, interleaved, after a warm-up")
    print()
    print("| | whole call, s | new tokens/s | vs HF | prefill + 1st token, s | decode ms/step | decode tokens/s "
          "| decode vs HF |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    labels = {"ours": "ours (`generate`)", "HF": "HF `generate`",
              "head-major": "experiment: + head-major cache"}
    hf_dec = full["HF"] - pre["HF"]
    for x in names:
        dec = full[x] - pre[x]
        print(f"| {labels[x]} | {full[x]:.2f} | {b * n / full[x]:,.0f} | **{full['HF'] / full[x]:.2f}x** "
              f"| {pre[x]:.2f}{'' if x in ('ours', 'HF') else ' (ours)'} | {dec / (n - 1) * 1e3:.0f} "
              f"| {b * (n - 1) / dec:,.0f} | {hf_dec / dec:.2f}x |")


if __name__ == "__main__":
    main()
