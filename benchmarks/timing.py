"""Shared by the benchmarks: best wall time of several callables, run interleaved; the versions
line every benchmark prints first, so each figure it prints can be traced to its install."""

from __future__ import annotations

import time


def print_versions() -> str:
    """Prints and returns `mir_jax.provenance.summary()`: the library versions and the CPU."""
    from mir_jax.provenance import summary

    line = summary()
    print(line, flush=True)
    return line


def interleaved_best(repeats: int, *fns, warmup: bool = False) -> list[float]:
    """Best wall time of each callable over `repeats` rounds of (a, b, a, b, ...).

    Interleaved because this shared VM's speed drifts by tens of percent over minutes, and
    the ratio between ours and the reference is what a benchmark reports. `warmup` calls each
    once first (compilation, allocator warm-up) without timing it.
    """
    if warmup:
        for fn in fns:
            fn()
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            start = time.perf_counter()
            fn()
            best[i] = min(best[i], time.perf_counter() - start)
    return best
