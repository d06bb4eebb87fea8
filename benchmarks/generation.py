"""Batched greedy decoding: our `mir_jax.models.generate.generate` (jitted prefill, then the whole
decoding loop as one jitted `while_loop` with the KV cache updated in place; what
`mir_jax.evals.predict.generate_texts` calls) against HF transformers'
`LlavaForConditionalGeneration.generate`, same weights, same prompts, one process.

Config (issue: generation benchmark): the benchmarks' "small" LLaVA (`train_step.hf_config`: CLIP
ViT 4 layers x 256 at 224 px -> 256 image tokens, Llama 4 layers x 512, vocab 32k; 49.2M
parameters), float32, random weights (a random HF model saved with `save_pretrained`, loaded with
`mir_jax.weights.load_weights`). Batch 16 prompts of different lengths (BOS, text, one image, text),
left-padded; 32 new tokens, greedy, EOS disabled on both sides (HF `eos_token_id=None`, ours
`eos_token_id=-1`), so both make exactly 32 tokens a row. The token arrays must agree.

Timed interleaved (ours, HF, ...; best of `--repeats` after one untimed warm-up, which holds our
compilation): the whole call with `--new_tokens` tokens, and the same call with 1 new token
("prefill": the prompt forward plus the first token's argmax). Decode = whole - prefill, i.e.
the remaining new_tokens - 1 steps.

    python benchmarks/generation.py [--batch 16] [--new_tokens 32] [--preset small] [--repeats 5]
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

from mir_jax.allocator import preloaded

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--new_tokens", type=int, default=32)
    ap.add_argument("--preset", choices=("small", "1b"), default="small", help="see train_step.hf_config")
    ap.add_argument("--repeats", type=int, default=5, help="timed rounds after one warm-up round")
    args = ap.parse_args()

    import jax
    import torch
    from transformers import LlavaForConditionalGeneration

    from mir_jax.models.generate import generate
    from mir_jax.weights import load_weights

    b, n = args.batch, args.new_tokens
    if n < 2:
        ap.error("--new_tokens must be at least 2 (decode = whole call - the 1-token call)")
    hf_cfg = hf_config(args.preset, VOCAB, IMAGE_TOKEN)
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        hf = LlavaForConditionalGeneration(hf_cfg).eval()
        hf.save_pretrained(tmp)
        cfg, model = load_weights(tmp)[:2]
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

    def theirs(m):
        with torch.no_grad():
            out = hf.generate(input_ids=t_ids, attention_mask=t_am, pixel_values=t_px, max_new_tokens=m,
                              do_sample=False, eos_token_id=None, pad_token_id=PAD)
        return out[:, s:].numpy()

    # Same tokens first (this also compiles ours and warms up HF).
    want = theirs(n)
    assert want.shape == (b, n), want.shape
    sides = {"ours": ours, "HF": theirs}
    for x, fn in sides.items():
        equal = float(np.mean(fn(n) == want))
        assert equal == 1.0, f"{x} and HF differ: {equal:.1%} of the tokens are equal"
    names = list(sides)
    # Whole calls of each side, then their 1-token calls.
    fns = [functools.partial(sides[x], m) for m in (n, 1) for x in names]
    times = interleaved_best(args.repeats, *fns, warmup=True)
    full, pre = dict(zip(names, times)), dict(zip(names, times[len(names):]))

    print(f"config: {args.preset} LLaVA ({n_params / 1e6:.1f}M parameters; ViT {cfg.vision.num_layers}x"
          f"{cfg.vision.hidden_size} @{size}, {k} image tokens; Llama {cfg.text.num_layers}x"
          f"{cfg.text.hidden_size}, vocab {cfg.text.vocab_size}), float32; batch {b}, prompts "
          f"{int(am.sum(1).min())}-{s} tokens (left-padded to {s}), {n} new tokens, greedy, no EOS")
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; jax {jax.__version__} "
          f"({jax.devices()[0].platform}), torch {torch.__version__} ({torch.get_num_threads()} threads, "
          f"torch's default here), transformers {__import__('transformers').__version__}; allocator {preloaded()}")
    print(f"tokens: every side == HF on all {b}x{n}; best of {args.repeats}, interleaved, after a warm-up")
    print()
    print("| | whole call, s | new tokens/s | vs HF | prefill + 1st token, s | decode ms/step | decode tokens/s "
          "| decode vs HF |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    labels = {"ours": "ours (`generate`)", "HF": "HF `generate`"}
    hf_dec = full["HF"] - pre["HF"]
    for x in names:
        dec = full[x] - pre[x]
        print(f"| {labels[x]} | {full[x]:.2f} | {b * n / full[x]:,.0f} | **{full['HF'] / full[x]:.2f}x** "
              f"| {pre[x]:.2f} | {dec / (n - 1) * 1e3:.0f} "
              f"| {b * (n - 1) / dec:,.0f} | {hf_dec / dec:.2f}x |")


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
