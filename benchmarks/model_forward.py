"""Forward throughput of our jitted LLaVA against HF PyTorch eager, same weights, same process.

Config (issue 3): CLIP ViT 4 layers width 256 at 224 px (patch 14 -> 256 image tokens), Llama 4
layers width 512, vocab 32k, batch 8, length 512, float32, one image per row.

    python benchmarks/model_forward.py [--repeats 3] [--write BENCHMARKS.md]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile

import numpy as np
from timing import interleaved_best

from mir_jax.allocator import preloaded


def build_hf(tmp: str, *, vocab: int, image_token: int):
    import torch
    from transformers import (
        CLIPVisionConfig,
        LlamaConfig,
        LlavaConfig,
        LlavaForConditionalGeneration,
    )

    vc = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=4,
                          image_size=224, patch_size=14)
    tc = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                     num_key_value_heads=8, vocab_size=vocab)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(
        LlavaConfig(vision_config=vc, text_config=tc, image_token_id=image_token)).eval()
    model.save_pretrained(tmp)
    return model


def batch(b: int, s: int, k: int, vocab: int, image_token: int):
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab - 1, (b, s)).astype(np.int64)
    ids[:, 0] = 1
    ids[:, 5:5 + k] = image_token
    px = rng.standard_normal((b, 224, 224, 3)).astype(np.float32)
    return ids, np.ones((b, s), np.int64), px


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--write", default=None, help="append a result line to this markdown file")
    args = ap.parse_args()

    import jax
    import jax.numpy as jnp
    import torch
    from flax import nnx

    from mir_jax.weights import load_weights

    vocab, image_token = 32000, 31999
    with tempfile.TemporaryDirectory() as tmp:
        hf = build_hf(tmp, vocab=vocab, image_token=image_token)
        cfg, model = load_weights(tmp)[:2]
    k = cfg.num_image_tokens
    ids, am, px = batch(args.batch, args.length, k, vocab, image_token)
    tokens = args.batch * args.length

    graphdef, state = nnx.split(model)

    @jax.jit
    def fwd(state, ids, px, am):
        return nnx.merge(graphdef, state)(ids, px, None, am).logits

    j_ids, j_px, j_am = jnp.asarray(ids, jnp.int32), jnp.asarray(px)[:, None], jnp.asarray(am, jnp.int32)

    t_ids, t_am = torch.tensor(ids), torch.tensor(am)
    t_px = torch.tensor(px).permute(0, 3, 1, 2).contiguous()

    def hf_fwd():
        with torch.no_grad():
            return hf(input_ids=t_ids, pixel_values=t_px, attention_mask=t_am).logits

    ours, theirs = interleaved_best(args.repeats, lambda: fwd(state, j_ids, j_px, j_am).block_until_ready(),
                                    hf_fwd, warmup=True)
    with torch.no_grad():
        diff = float(np.abs(hf_fwd().numpy() - np.asarray(fwd(state, j_ids, j_px, j_am))).max())

    line = (f"| LLaVA forward (ViT 4x256 @224, Llama 4x512, V=32k, B={args.batch}, S={args.length}, f32) "
            f"| {tokens / ours:,.0f} tok/s | {tokens / theirs:,.0f} tok/s | {theirs / ours:.2f}x "
            f"| {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), {preloaded()} |")
    print(f"ours (jax.jit):     {ours * 1e3:8.1f} ms/batch  {tokens / ours:10,.0f} tokens/s")
    print(f"HF PyTorch eager:   {theirs * 1e3:8.1f} ms/batch  {tokens / theirs:10,.0f} tokens/s")
    print(f"speed-up: {theirs / ours:.2f}x   (max |logit diff| {diff:.2e})")
    if args.write:
        new = not os.path.exists(args.write)
        with open(args.write, "a") as f:
            if new:
                f.write("# Benchmarks\n\n| benchmark | mir-jax | HF PyTorch eager | ratio | machine |\n"
                        "|---|---|---|---|---|\n")
            f.write(line + "\n")


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
