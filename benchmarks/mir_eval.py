"""End-to-end MIR evaluation: ours vs the published pipeline, time and peak host memory.

Run: python benchmarks/mir_eval.py [--num_samples 100] [--big 1000]

A tiny random HF LLaVA (CLIP 4×64 at 56 px → 16 image tokens, Llama 4×128) is
saved in HF's format; both sides evaluate MIR on the same embedded-corpus samples
(image + unrelated text, vicuna_v1, seq_len 320):

  published: what the MIR paper's tool does: one HF PyTorch forward per sample with
             output_hidden_states, every layer's hidden states copied to the host,
             then per layer: torch normalization and outlier replacement, NumPy
             covariances and scipy.linalg.sqrtm.
  ours:      `mir_jax.evals.evaluate_mir`: batched (8), jitted forward, hidden
             states reduced to statistics on the device (streaming, two passes).

Each variant runs in its own subprocess so that its peak RSS (ru_maxrss) is its own.
Then ours (streaming) at --num_samples and --big samples: peak memory must not grow
with the sample count by more than 10%.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time

IMAGE_SIZE, PATCH, SEQ_LEN = 56, 14, 320


def build_model(path: str) -> None:
    import torch
    import transformers

    from mir_jax.data import ByteTokenizer

    tok = ByteTokenizer()
    vision = transformers.CLIPVisionConfig(hidden_size=64, intermediate_size=256, num_hidden_layers=4,
                                           num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH)
    text = transformers.LlamaConfig(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                                    num_attention_heads=4, num_key_value_heads=4, vocab_size=tok.vocab_size,
                                    pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=tok.image_token_id)
    torch.manual_seed(0)
    model = transformers.LlavaForConditionalGeneration(cfg).eval()
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g)
            p.copy_((1 + 0.2 * r if name.endswith("weight") else 0.2 * r) if p.ndim == 1
                    else r / math.sqrt(math.prod(p.shape[1:])))
    model.save_pretrained(path)


def batches(num_samples: int, batch_size: int):
    from mir_jax.data import ByteTokenizer, make_mir_iterator
    from mir_jax.data.images import CLIP_MEAN, CLIP_STD

    return make_mir_iterator("synthetic", "synthetic", tokenizer=ByteTokenizer(), num_samples=num_samples,
                             image_size=IMAGE_SIZE, mean=CLIP_MEAN, std=CLIP_STD, num_image_tokens=16,
                             batch_size=batch_size, seq_len=SEQ_LEN, num_threads=1)


def run_published(path: str, num_samples: int) -> dict:
    import numpy as np
    import scipy.linalg
    import torch
    import transformers

    from mir_jax.data import ByteTokenizer

    image_id = ByteTokenizer().image_token_id
    model = transformers.LlavaForConditionalGeneration.from_pretrained(path).eval()
    per_sample_states, vision_pos, text_pos = [], [], []
    start = time.perf_counter()
    for batch in batches(num_samples, 1):
        ids = np.asarray(batch["input_ids"][0])
        if not batch["attention_mask"][0].any():
            continue
        length = int(batch["attention_mask"][0].sum())
        ids = ids[:length]
        pixels = np.asarray(batch["pixel_values"][0]).transpose(0, 3, 1, 2)
        with torch.no_grad():
            out = model(input_ids=torch.from_numpy(ids[None]).long(),
                        pixel_values=torch.from_numpy(pixels).float(), output_hidden_states=True)
        # The published tool keeps every layer's hidden states of every sample on the host.
        per_sample_states.append([h[0].numpy().copy() for h in out.hidden_states])
        image = np.flatnonzero(ids == image_id)
        vision_pos.append(image)
        text_pos.append(np.arange(image.max() + 1, length))
    forward_s = time.perf_counter() - start
    per_layer = []
    for layer in range(1, len(per_sample_states[0])):
        v = torch.from_numpy(np.concatenate([s[layer][p] for s, p in zip(per_sample_states, vision_pos)])).double()
        t = torch.from_numpy(np.concatenate([s[layer][p] for s, p in zip(per_sample_states, text_pos)])).double()
        scale = 1 / t.norm(dim=1).mean()
        v, t = v * scale, t * scale
        for x in (v, t):
            norms = x.norm(dim=1)
            x[(norms - norms.median()).abs() > 3 * norms.std()] = x.median(dim=0).values
        v, t = v.numpy(), t.numpy()
        cv, ct = np.cov(v, rowvar=False), np.cov(t, rowvar=False)
        root = scipy.linalg.sqrtm(cv @ ct)
        mu = v.mean(0) - t.mean(0)
        per_layer.append(float(mu @ mu + np.trace(cv) + np.trace(ct) - 2 * np.trace(root).real))
    return dict(per_layer=per_layer, overall=float(np.log10(np.sum(per_layer))),
                total_s=time.perf_counter() - start, forward_s=forward_s)


def run_ours(path: str, num_samples: int, mode: str) -> dict:
    from mir_jax.evals.mir import evaluate_mir
    from mir_jax.weights import load_weights

    _, model = load_weights(path)[:2]
    start = time.perf_counter()
    res = evaluate_mir(model, lambda: batches(num_samples, 8), mode=mode, progress=False)
    return dict(per_layer=[float(x) for x in res.per_layer], overall=res.overall,
                total_s=time.perf_counter() - start, forward_s=res.timings["forward_s"])


def child(args) -> None:
    run = (lambda: run_published(args.model, args.num_samples)) if args.child == "published" \
        else (lambda: run_ours(args.model, args.num_samples, args.child))
    cold = run()  # includes compilation (ours) and first-call warm-up (torch)
    out = run() if args.warm else cold
    out["cold_s"] = cold["total_s"]
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("RESULT " + json.dumps(out))


def spawn(model: str, which: str, num_samples: int, warm: bool = True) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    proc = subprocess.run([sys.executable, __file__, "--child", which, "--model", model,
                           "--num_samples", str(num_samples), "--warm", str(int(warm))],
                          capture_output=True, text=True, env=env)
    lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
    if proc.returncode or not lines:
        raise RuntimeError(f"{which} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][7:])


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_samples", type=int, default=100)
    parser.add_argument("--big", type=int, default=1000)
    parser.add_argument("--child", default=None)
    parser.add_argument("--model", default=None)
    parser.add_argument("--warm", type=int, default=1, help="also time a second run in the process")
    args = parser.parse_args()
    if args.child:
        return child(args)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs; tiny LLaVA (CLIP 4x64, Llama 4x128), "
          f"{args.num_samples} samples, seq_len {SEQ_LEN}")
    with tempfile.TemporaryDirectory() as tmp:
        build_model(tmp)
        published = spawn(tmp, "published", args.num_samples)
        ours = spawn(tmp, "streaming", args.num_samples)
        exact = spawn(tmp, "exact", args.num_samples)
        rel = max(abs(a / b - 1) for a, b in zip(ours["per_layer"], published["per_layer"]))
        print(f"\n{'':28} {'cold s':>8} {'warm s':>8} {'peak RSS MB':>12}  overall MIR")
        for name, r in (("published (torch + SciPy)", published), ("ours streaming", ours),
                        ("ours exact", exact)):
            print(f"{name:28} {r['cold_s']:8.1f} {r['total_s']:8.1f} {r['peak_rss_mb']:12.0f}  {r['overall']:.6f}")
        print("cold = first run in a fresh process (ours: includes jit compilation); warm = second run")
        print(f"speed-up vs published, streaming: cold {published['cold_s'] / ours['cold_s']:.1f}x, "
              f"warm {published['total_s'] / ours['total_s']:.1f}x; exact: warm "
              f"{published['total_s'] / exact['total_s']:.1f}x; max per-layer relative difference: {rel:.1e}")
        big = spawn(tmp, "streaming", args.big, warm=False)
        small = spawn(tmp, "streaming", args.num_samples, warm=False)
        growth = big["peak_rss_mb"] / small["peak_rss_mb"] - 1
        print(f"\nours streaming, peak RSS: {args.num_samples} samples {small['peak_rss_mb']:.0f} MB, "
              f"{args.big} samples {big['peak_rss_mb']:.0f} MB ({100 * growth:+.1f}%), "
              f"{big['total_s']:.1f} s")


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
