"""Data pipeline throughput: ours (grain, 0 and 2 workers) vs a LLaVA-style reference loop.

Workload: caption JSONL over JPEG files of 448x336 px (4:3, short side 336),
processed to 336x336 with LLaVA's pad-to-square, CLIP normalization, plain
template, 576 image tokens, seq_len 640, batch 16, built-in byte tokenizer.

Reference (in the same process): what LLaVA's ``LazySupervisedDataset`` does
per sample with a DataLoader at num_workers=0 -- PIL decode, ``expand2square``
with the mean colour, ``transformers.CLIPImageProcessor`` (resize, centre crop,
normalize), tokenize, then stack a batch -- in a plain Python loop.

Also measures the default embedded corpus (64 px, 144 image tokens) that the
tiny configs train on. Prints examples/s and the ratio ours / reference.

    python benchmarks/data_pipeline.py [--n 256] [--batch 16]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import numpy as np
from PIL import Image

from mir_jax.data import CLIP_MEAN, CLIP_STD, ByteTokenizer, make_train_iterator


def make_jpegs(folder: str, n: int, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lines = []
    for i in range(n):
        # Smooth random colour field plus noise: realistic JPEG sizes (~30-60 kB).
        base = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
        img = Image.fromarray(base).resize((448, 336), Image.BICUBIC)
        arr = np.asarray(img).astype(np.int16) + rng.integers(-20, 20, (336, 448, 3))
        Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8)).save(
            os.path.join(folder, f"{i:05d}.jpg"), quality=90)
        lines.append(json.dumps({"image": f"{i:05d}.jpg", "caption": f"a photo number {i} of things."}))
    path = os.path.join(folder, "captions.jsonl")
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    return path


def reference_rate(folder: str, path: str, batch: int, num_batches: int, k: int, seq: int) -> float:
    from transformers import CLIPImageProcessor

    proc = CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                              image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    tok = ByteTokenizer()
    records = [json.loads(x) for x in open(path)]
    bg = tuple(int(x * 255) for x in CLIP_MEAN)

    def sample(rec):
        img = Image.open(os.path.join(folder, rec["image"])).convert("RGB")
        w, h = img.size
        side = max(w, h)
        sq = Image.new("RGB", (side, side), bg)
        sq.paste(img, ((side - w) // 2, (side - h) // 2))
        px = proc(sq, return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
        ids = [tok.bos_id] + [tok.image_token_id] * k + tok.encode(rec["caption"]) + [tok.eos_id]
        labels = [-100] * (k + 1) + ids[k + 1:]
        pad = seq - len(ids)
        return px, np.array(ids + [0] * pad, np.int32), np.array(labels + [-100] * pad, np.int32)

    def run(n_batches, start):
        for b in range(n_batches):
            items = [sample(records[(start + b * batch + j) % len(records)]) for j in range(batch)]
            np.stack([x[0] for x in items]), np.stack([x[1] for x in items])

    run(1, 0)  # warm-up
    t = time.perf_counter()
    run(num_batches, batch)
    return batch * num_batches / (time.perf_counter() - t)


def ours_rate(config: dict, batch: int, num_batches: int, **kw) -> float:
    it = make_train_iterator(config, tokenizer=ByteTokenizer(), batch_size=batch, seed=0, **kw)
    next(it)  # warm-up (workers start, buffers fill)
    t = time.perf_counter()
    for _ in range(num_batches):
        next(it)
    rate = batch * num_batches / (time.perf_counter() - t)
    del it
    return rate


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n", type=int, default=256, help="JPEG files to generate")
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--batches", type=int, default=8, help="timed batches per run")
    args = p.parse_args()
    k, seq = 576, 640
    with tempfile.TemporaryDirectory() as folder:
        path = make_jpegs(folder, args.n)
        src = [{"type": "captions", "path": path, "image_folder": folder}]
        kw = dict(image_size=336, mean=CLIP_MEAN, std=CLIP_STD, num_image_tokens=k, seq_len=seq)
        ref = reference_rate(folder, path, args.batch, args.batches, k, seq)
        print(f"336px JPEG captions, batch {args.batch}, {os.cpu_count()} CPUs")
        print(f"  reference (LLaVA-style loop, HF CLIPImageProcessor): {ref:8.1f} examples/s")
        for label, cfg in [("ours, 0 workers, 0 threads", {"num_threads": 0}),
                           ("ours, 0 workers, 4 threads", {"num_threads": 4}),
                           ("ours, 2 workers, 1 thread each", {"num_workers": 2, "num_threads": 1})]:
            r = ours_rate({"sources": src, **cfg}, args.batch, args.batches, **kw)
            print(f"  {label:<52} {r:8.1f} examples/s  ratio {r / ref:5.2f}x")
    r = ours_rate({"num_threads": 2}, 32, 16, image_size=64, num_image_tokens=144, seq_len=512)
    print(f"embedded corpus (tiny configs: 64 px, K=144, seq 512, batch 32): {r:8.1f} examples/s")


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
