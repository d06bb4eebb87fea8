"""Cost of MIR's jackknife interval as a multiple of one plain compute_mir call.

Run: python benchmarks/mir_uncertainty.py [--quick] [--layers L] [--dim D] [--samples S]
         [--tokens T] [--groups G] [--method eigh]

In one process, on the same LLM-like rows (a per-sample offset shared by a sample's tokens,
a power-law spectrum, rogue dimensions, a few massive-activation rows), S samples of T vision
and T text tokens each, it times interleaved (benchmarks/timing.py), after compilation:
  plain:    mir_jax.mir.compute_mir(vision, text, method=...)
  interval: the same call with uncertainty="jackknife" over G sample groups (one compiled
            program: the plain result plus G leave-one-group-out replicates)
and prints the ratio interval / plain (the target is at most 20x), and that the interval
call's per_layer equals the plain call's.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from timing import interleaved_best

from mir_jax import mir


def sample_rows(rng, layers, samples, tokens, dim, shift):
    """[L, S*T, D] float32 rows; row i belongs to sample i // T."""
    spectrum = np.arange(1, dim + 1, dtype=np.float32) ** -0.5
    out = np.empty((layers, samples * tokens, dim), np.float32)
    for layer in range(layers):
        offsets = rng.standard_normal((samples, dim), np.float32) * spectrum
        x = rng.standard_normal((samples * tokens, dim), np.float32) * spectrum
        x += np.repeat(offsets, tokens, axis=0) + shift
        x[:, :4] = x[:, :4] * 10 + 20  # rogue dimensions
        x[rng.choice(len(x), max(1, len(x) // 500), replace=False), 4:6] += 300.0  # massive rows
        out[layer] = x
    return out


def run(layers, samples, tokens, dim, groups, method, repeats):
    rng = np.random.default_rng(0)
    vision = jnp.asarray(sample_rows(rng, layers, samples, tokens, dim, 0.5))
    text = jnp.asarray(sample_rows(rng, layers, samples, tokens, dim, 0.0))
    ids = np.repeat(np.arange(samples), tokens)
    vision_groups, text_groups = mir.jackknife_groups(ids, ids, groups)

    plain = lambda: mir.compute_mir(vision, text, method=method)  # noqa: E731
    interval = lambda: mir.compute_mir(vision, text, method=method, uncertainty="jackknife",  # noqa: E731
                                       vision_groups=vision_groups, text_groups=text_groups)
    start = time.perf_counter()
    first = jax.block_until_ready(interval())
    compile_s = time.perf_counter() - start
    reference = jax.block_until_ready(plain())
    plain_s, interval_s = interleaved_best(repeats, lambda: jax.block_until_ready(plain()),
                                           lambda: jax.block_until_ready(interval()))
    same = bool(np.array_equal(np.asarray(first.per_layer), np.asarray(reference.per_layer)))
    lo, hi = np.asarray(first.overall_interval)
    print(f"\nL={layers} D={dim} samples={samples} x {tokens} tokens per modality "
          f"(N=M={samples * tokens}) G={groups} method={method}")
    print(f"  plain compute_mir:               {plain_s:8.2f} s")
    print(f"  with uncertainty='jackknife':    {interval_s:8.2f} s  (first call {compile_s:.1f} s)")
    print(f"  interval / plain: {interval_s / plain_s:5.2f}x   (target <= 20x)")
    print(f"  overall {float(first.overall):.4f}, SE {float(first.overall_se):.4f}, "
          f"95 % interval [{lo:.4f}, {hi:.4f}]; per_layer identical to plain: {same}")
    return interval_s / plain_s


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes (a smoke run)")
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--dim", type=int, default=4096)
    parser.add_argument("--samples", type=int, default=100)
    parser.add_argument("--tokens", type=int, default=48, help="tokens per sample and modality")
    parser.add_argument("--groups", type=int, default=10)
    parser.add_argument("--method", default="auto")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    if args.quick:
        args.layers, args.dim, args.samples, args.tokens = 2, 64, 20, 8
    print(f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} "
          f"{jax.default_backend()} device(s), jax {jax.__version__}, numpy {np.__version__}")
    run(args.layers, args.samples, args.tokens, args.dim, args.groups, args.method, args.repeats)


if __name__ == "__main__":
    main()
