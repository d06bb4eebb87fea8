"""Reading dumped hidden states for MIR: our reader vs safetensors reading the same files alone.

Run: python benchmarks/hidden_states.py [--quick] [--samples N --layers L --tokens S --dim D
     --dtype bf16|f16|f32 --shards K] [--mir]

It writes N samples of random hidden states in the layout of docs/mir.md section 10 (HF's L+1
states [L+1, S, D], 576 vision positions after a 24-position prompt, the rest text) into K
shards, then times in one process, interleaved, best of --repeats, from the page cache:
  safetensors: safe_open + get_tensor of every tensor of every shard (the files read alone);
  streaming:   one pass of mir_jax.mir.hidden_states.stream_batches: per-layer views of the
               mapped files, copied into the fixed-shape batches (in the files' dtype) that
               MIRAccumulator.update takes, each copy checked for NaN/infinity;
  exact:       read_layer for every layer (layer l of every sample's rows, checked, in the files'
               dtype), what the exact mode reads.
Throughput is the files' size over the time, for all three (ours skips the prompt positions, so
it reads slightly less than the files hold). The target is at least half of safetensors' GB/s.
--mir also times the whole streaming MIR once (every pass plus the D×D moments, which are
compute-bound on a CPU: about 2·L·rows·D² flops per pass, so its GB/s is not a reading figure).
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

import ml_dtypes
import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file
from timing import interleaved_best

from mir_jax.mir.hidden_states import (
    _Files,
    hidden_states_mir,
    open_hidden_states,
    read_layer,
    stream_batches,
)

DTYPES = {"bf16": ml_dtypes.bfloat16, "f16": np.float16, "f32": np.float32}
PROMPT, VISION = 24, 576


def write_files(directory, samples, layers, tokens, dim, dtype, shards):
    """Random [L+1, S, D] states per sample with the masks, in `shards` files; their bytes."""
    rng = np.random.default_rng(0)
    per_shard = -(-samples // shards)
    vision = np.zeros(tokens, bool)
    vision[PROMPT:PROMPT + VISION] = True
    text = np.zeros(tokens, bool)
    text[PROMPT + VISION:] = True
    for shard in range(shards):
        tensors = {}
        for i in range(shard * per_shard, min(samples, (shard + 1) * per_shard)):
            states = rng.standard_normal((layers + 1, tokens, dim), np.float32)
            states[:, vision] += 0.5
            tensors.update({f"{i:06d}/hidden_states": states.astype(DTYPES[dtype]),
                            f"{i:06d}/vision_mask": vision, f"{i:06d}/text_mask": text})
        save_file(tensors, os.path.join(directory, f"shard-{shard:05d}.safetensors"),
                  metadata={"format": "mir-jax.hidden_states", "embeddings": "included"})
    return sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory))


def safetensors_alone(files):
    total = 0
    for file in files:
        with safe_open(file, framework="np") as f:
            for key in f.keys():
                total += f.get_tensor(key).size
    return total


def ours_streaming(index):
    return sum(batch[0].size + batch[1].size for batch in stream_batches(index))


def ours_exact(index):
    with _Files(index.files) as handles:
        return sum(read_layer(index, layer, handles)[0].size for layer in range(1, index.layers + 1))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="a small set (a smoke run)")
    parser.add_argument("--samples", type=int, default=24)
    parser.add_argument("--layers", type=int, default=33)
    parser.add_argument("--tokens", type=int, default=1000)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--dtype", default="bf16", choices=sorted(DTYPES))
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mir", action="store_true", help="also time the whole streaming MIR once")
    args = parser.parse_args()
    if args.quick:
        args.samples, args.layers, args.tokens, args.dim, args.shards = 4, 3, 700, 64, 2
    with tempfile.TemporaryDirectory() as directory:
        size = write_files(directory, args.samples, args.layers, args.tokens, args.dim, args.dtype,
                           args.shards)
        index = open_hidden_states(directory)
        print(f"\n{args.samples} samples x [L+1={args.layers + 1}, S={args.tokens}, D={args.dim}] "
              f"{args.dtype} in {args.shards} shards: {size / 1e9:.3f} GB")
        t_ref, t_stream, t_exact = interleaved_best(
            args.repeats, lambda: safetensors_alone(index.files), lambda: ours_streaming(index),
            lambda: ours_exact(index), warmup=True)
        gb = size / 1e9
        print(f"  safetensors alone (get_tensor of every tensor): {t_ref:7.3f} s  {gb / t_ref:6.2f} GB/s")
        print(f"  ours, one streaming pass (batches for MIRAccumulator): {t_stream:7.3f} s  "
              f"{gb / t_stream:6.2f} GB/s  ratio {t_ref / t_stream:.2f}")
        print(f"  ours, exact mode's reads (layer by layer):      {t_exact:7.3f} s  "
              f"{gb / t_exact:6.2f} GB/s  ratio {t_ref / t_exact:.2f}")
        print(f"  ratio = our GB/s / safetensors' GB/s (target >= 0.5): streaming "
              f"{t_ref / t_stream:.2f}, exact {t_ref / t_exact:.2f}")
        if args.mir:
            start = time.perf_counter()
            out = hidden_states_mir(directory, mode="streaming", index=index)
            elapsed = time.perf_counter() - start
            print(f"  whole streaming MIR ({out.timings['passes']} passes, compile included): "
                  f"{elapsed:7.2f} s, {out.timings['passes'] * gb / elapsed:.3f} GB/s read; "
                  f"MIR {float(out.result.overall):.6f}")


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
