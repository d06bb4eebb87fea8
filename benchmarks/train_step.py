"""Training-step throughput: our jitted, sharded train step against HF transformers' PyTorch
`LlavaForConditionalGeneration` with `torch.optim.AdamW`, same config, same weights, one process.

Config (issue 5): CLIP ViT 4 layers width 256 at 224 px (patch 14 -> 256 image tokens), Llama 4
layers width 512 (8 heads, MLP 1376), vocab 32k, batch 8, length 512, float32, one image per
row, every parameter trained. Both sides: next-token loss over the text positions, AdamW
(lr 1e-4, wd 0.01 on ours' matrices / all of torch's), global-norm clipping at 1.0.

Prints tokens/s of each, the ratio, model FLOPs per token (LLM + the vision tower's share) and
MFU against the device peak (`mir_jax.train.metrics.peak_flops_per_device`; on a CPU derived from
the cores, SIMD width and the clock the kernel reports, which in a VM is the nominal one). The
first-step losses of the two must agree (same weights, same batch).

    python benchmarks/train_step.py [--steps 3] [--write BENCHMARKS.md]
    python benchmarks/train_step.py --preset 1b --dtype bfloat16 --no-hf   # on an accelerator
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
from timing import interleaved_best

from mir_jax.allocator import preloaded

OPT = {"lr": 1e-4, "warmup_steps": 0, "end_factor": 1.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
       "weight_decay": 0.01, "clip_norm": 1.0}


def hf_config(preset: str, vocab: int, image_token: int):
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig

    if preset == "small":
        vc = CLIPVisionConfig(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                              num_attention_heads=4, image_size=224, patch_size=14)
        tc = LlamaConfig(hidden_size=512, intermediate_size=1376, num_hidden_layers=4, num_attention_heads=8,
                         num_key_value_heads=8, vocab_size=vocab)
    else:  # ~1.1B: ViT-L/14 @224 + a 1B Llama (TinyLlama-like, 22 layers x 2048)
        vc = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                              num_attention_heads=16, image_size=224, patch_size=14)
        tc = LlamaConfig(hidden_size=2048, intermediate_size=5632, num_hidden_layers=22, num_attention_heads=32,
                         num_key_value_heads=4, vocab_size=vocab)
    return LlavaConfig(vision_config=vc, text_config=tc, image_token_id=image_token)


def make_batch(b: int, s: int, k: int, vocab: int, image_token: int) -> dict[str, np.ndarray]:
    """Rows: BOS, 4 text tokens, K image tokens, then text; loss on the text after the image."""
    rng = np.random.default_rng(0)
    ids = rng.integers(3, vocab - 1, (b, s)).astype(np.int32)
    ids[:, 0] = 1
    ids[:, 5:5 + k] = image_token
    labels = ids.copy()
    labels[:, :5 + k] = -100
    return {"input_ids": ids, "labels": labels, "segment_ids": np.ones((b, s), np.int32),
            "positions": np.broadcast_to(np.arange(s, dtype=np.int32), (b, s)).copy(),
            "attention_mask": np.ones((b, s), np.int32),
            "pixel_values": rng.standard_normal((b, 1, 224, 224, 3)).astype(np.float32),
            "image_mask": np.ones((b, 1), bool)}


def run_ours(model_dir: str | None, hf_cfg, batch, dtype: str):
    """Builds our step; returns (config, n_params, first loss, compile s, one-step callable)."""
    import jax
    from flax import nnx

    from mir_jax.sharding import make_mesh
    from mir_jax.train.step import Stepper, global_batch
    from mir_jax.weights import hf as hf_io
    from mir_jax.weights import load_weights

    recipe = {"connector": True, "vision": "all", "llm": "all"}
    remat = "none" if dtype == "float32" else "dots_no_batch"
    if model_dir:
        cfg, model = load_weights(model_dir, dtype=dtype, remat=remat)[:2]
        params = nnx.state(model, nnx.Param)
    else:
        cfg, params = hf_io.config_from_hf(hf_cfg.to_dict(), dtype=dtype, remat=remat), None
    st = Stepper(cfg, recipe, OPT, 1000, make_mesh((1, -1, 1)))
    state, frozen = st.init(0, params)
    gb = global_batch(batch, st)
    t = time.perf_counter()
    state, m = st.train_step(state, frozen, gb)
    first = float(m["loss"])
    compile_s = time.perf_counter() - t
    carry = {"state": state}

    def step():
        carry["state"], m = st.train_step(carry["state"], frozen, gb)
        jax.block_until_ready(m["loss"])

    n_params = sum(st.partition.counts())
    return cfg, n_params, first, compile_s, step


def run_hf(model, batch):
    """Builds the HF step; returns (first loss, one-step callable)."""
    import torch

    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=OPT["lr"], betas=(OPT["b1"], OPT["b2"]),
                            eps=OPT["eps"], weight_decay=OPT["weight_decay"])
    ids = torch.tensor(batch["input_ids"], dtype=torch.long)
    labels = torch.tensor(batch["labels"], dtype=torch.long)
    am = torch.tensor(batch["attention_mask"], dtype=torch.long)
    px = torch.tensor(batch["pixel_values"][:, 0]).permute(0, 3, 1, 2).contiguous()

    def step():
        loss = model(input_ids=ids, pixel_values=px, attention_mask=am, labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), OPT["clip_norm"])
        opt.step()
        opt.zero_grad(set_to_none=True)
        return float(loss)

    return step(), step


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--steps", type=int, default=3, help="timed steps after one warm-up step")
    ap.add_argument("--preset", choices=("small", "1b"), default="small")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--no-hf", action="store_true", help="only our step (e.g. the 1b preset on a GPU)")
    ap.add_argument("--write", default=None, help="append a result line to this markdown file")
    args = ap.parse_args()

    import jax

    from mir_jax.train.metrics import model_flops_per_token, peak_flops_per_device

    vocab, image_token = 32000, 31999
    hf_cfg = hf_config(args.preset, vocab, image_token)
    k = (hf_cfg.vision_config.image_size // hf_cfg.vision_config.patch_size) ** 2
    batch = make_batch(args.batch, args.length, k, vocab, image_token)
    tokens = args.batch * args.length
    hf_model = None
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = None
        if not args.no_hf:
            import torch
            from transformers import LlavaForConditionalGeneration

            torch.manual_seed(0)
            hf_model = LlavaForConditionalGeneration(hf_cfg)
            hf_model.save_pretrained(tmp)
            model_dir = tmp
        cfg, n_params, ours_first, compile_s, ours_step = run_ours(model_dir, hf_cfg, batch, args.dtype)
    if hf_model is not None:
        hf_first, hf_step = run_hf(hf_model, batch)
        ours, theirs = interleaved_best(args.steps, ours_step, hf_step)
    else:
        (ours,) = interleaved_best(args.steps, ours_step)
    fpt = model_flops_per_token(cfg, args.length, images_per_token=1 / args.length)
    peak = peak_flops_per_device() * jax.device_count()
    print(f"config: {args.preset} ({n_params / 1e6:.1f}M parameters), B={args.batch}, S={args.length}, "
          f"{args.dtype}; device {jax.devices()[0].device_kind} x{jax.device_count()}; allocator {preloaded()}")
    print(f"model FLOPs/token (training, LLM + vision share): {fpt / 1e9:.3f} GFLOP; "
          f"device peak {peak / 1e12:.3f} TFLOP/s")
    print(f"ours (jax.jit):        {ours * 1e3:9.1f} ms/step  {tokens / ours:10,.0f} tokens/s  "
          f"MFU {tokens / ours * fpt / peak:6.1%}   (compile + first step {compile_s:.1f} s)")
    line_hf = ""
    if hf_model is not None:
        import torch

        print(f"HF PyTorch + AdamW:    {theirs * 1e3:9.1f} ms/step  {tokens / theirs:10,.0f} tokens/s  "
              f"MFU {tokens / theirs * fpt / peak:6.1%}   ({torch.get_num_threads()} threads)")
        print(f"speed-up: {theirs / ours:.2f}x   first-step loss: ours {ours_first:.5f}, HF {hf_first:.5f}")
        line_hf = f"| {tokens / theirs:,.0f} tok/s | {theirs / ours:.2f}x "
    if args.write:
        line = (f"| LLaVA train step + AdamW ({args.preset}, B={args.batch}, S={args.length}, {args.dtype}) "
                f"| {tokens / ours:,.0f} tok/s, MFU {tokens / ours * fpt / peak:.1%} {line_hf or '| - | - '}"
                f"| {platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, {preloaded()} |")
        with open(args.write, "a") as f:
            f.write(line + "\n")


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
