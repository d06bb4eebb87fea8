"""MIR kernel speed: the published accurate route vs ours vs the floor of any exact method.

Run: python benchmarks/mir_kernel.py [--quick] [--shape L,N,D ...]

In one process, on the same LLM-like random features (anisotropic power-law
spectrum, a few rogue dimensions with large mean/variance, a few massive-activation
rows), it times:
  published: the MIR paper's "accurate" route, per layer in a Python loop: torch
             text-centric normalization and 3-sigma outlier replacement (torch.median),
             NumPy covariances, scipy.linalg.sqrtm(Σ_V·Σ_T) in float64.
  ours:      mir_jax.mir.compute_mir (jitted, all layers in one program, float32),
             timed after compilation.
  floor:     what any exact method must at least do: the two covariance products,
             one Cholesky and one eigvalsh of a D×D matrix per layer (jitted, float32).
It prints per-layer agreement (relative to the float64 published values) and ratios.
"""

from __future__ import annotations

import argparse
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
import torch
from timing import interleaved_best

from mir_jax import mir
from mir_jax.mir import linalg


def llm_like_features(rng, layers, n, d, shift):
    """[L, n, D] float32 rows shaped like LLM hidden states."""
    out = np.empty((layers, n, d), np.float32)
    spectrum = np.arange(1, d + 1, dtype=np.float32) ** -0.5
    for layer in range(layers):
        rotation, _ = np.linalg.qr(rng.standard_normal((d, d)).astype(np.float32))
        x = (rng.standard_normal((n, d)).astype(np.float32) * spectrum) @ rotation
        x[:, :4] = x[:, :4] * 10 + 20  # rogue dimensions
        x += shift
        rows = rng.choice(n, max(1, n // 500), replace=False)
        x[rows, 4:6] += 300.0  # massive activations on a few tokens
        out[layer] = x
    return out


def published_route(vision, text):
    """The published accurate algorithm, transcribed: torch preprocessing, SciPy sqrtm."""
    per_layer = []
    for v, t in zip(vision, text):
        v, t = torch.from_numpy(v).double(), torch.from_numpy(t).double()
        scale = 1.0 / t.norm(dim=1).mean()
        v, t = v * scale, t * scale
        for x in (v, t):
            norms = x.norm(dim=1)
            outlier = (norms - norms.median()).abs() > 3 * norms.std()
            x[outlier] = x.median(dim=0).values
        v, t = v.numpy(), t.numpy()
        mu_v, mu_t = v.mean(0), t.mean(0)
        cov_v, cov_t = np.cov(v, rowvar=False), np.cov(t, rowvar=False)
        root = scipy.linalg.sqrtm(cov_v @ cov_t)
        fd = (mu_v - mu_t) @ (mu_v - mu_t) + np.trace(cov_v) + np.trace(cov_t) - 2 * np.trace(root).real
        per_layer.append(fd)
    return np.array(per_layer)


@jax.jit
def floor_route(vision, text):
    """Two covariance products, one Cholesky and one eigvalsh per layer (batched).

    The covariances use the same centering and symmetric Gram routine as ours, so
    the floor is never slower than what ours already does for that part.
    """
    def cov(x):
        count, _, centered = linalg.masked_mean_and_centered(x, jnp.ones(x.shape[:2], bool))
        return linalg.covariance_from_centered(centered, count)

    cov_v, cov_t = cov(vision), cov(text)
    # One matrix at a time, as ours does: batched CPU LAPACK calls running side by side
    # can deadlock XLA's thread pool on 2 cores (see linalg.per_matrix).
    chol = linalg.per_matrix(jnp.linalg.cholesky, cov_v)
    return linalg.per_matrix(jnp.linalg.eigvalsh, cov_t), chol


def run(layers, n, d, repeats, method):
    rng = np.random.default_rng(0)
    vision = llm_like_features(rng, layers, n, d, 0.5)
    text = llm_like_features(rng, layers, n, d, 0.0)
    vision_j, text_j = jnp.asarray(vision), jnp.asarray(text)

    start = time.perf_counter()
    expected = published_route(vision, text)
    published_s = time.perf_counter() - start

    ours_fn = lambda: mir.compute_mir(vision_j, text_j, method=method).per_layer  # noqa: E731
    compile_start = time.perf_counter()
    ours = np.asarray(jax.block_until_ready(ours_fn()))
    compile_s = time.perf_counter() - compile_start
    jax.block_until_ready(floor_route(vision_j, text_j))
    ours_s, floor_s = interleaved_best(
        repeats, lambda: jax.block_until_ready(ours_fn()),
        lambda: jax.block_until_ready(floor_route(vision_j, text_j)))

    agreement = float(np.max(np.abs(ours / expected - 1)))
    print(f"\nL={layers} D={d} N=M={n} method={method}")
    print(f"  published (torch + NumPy + SciPy sqrtm, float64): {published_s:8.2f} s "
          f"({published_s / layers:.2f} s/layer)")
    print(f"  ours (jitted, float32, after {compile_s:.1f} s first call): {ours_s:8.2f} s "
          f"({ours_s / layers:.2f} s/layer)")
    print(f"  floor (2 covariances + Cholesky + eigvalsh):        {floor_s:8.2f} s")
    print(f"  speed-up vs published: {published_s / ours_s:6.1f}x   ours / floor: {ours_s / floor_s:5.2f}x")
    print(f"  max per-layer relative difference vs published: {agreement:.2e}")
    return dict(L=layers, D=d, N=n, published_s=published_s, ours_s=ours_s, floor_s=floor_s,
                agreement=agreement)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shapes only (a smoke run)")
    parser.add_argument("--method", default="auto")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--shape", action="append", default=None, metavar="L,N,D",
                        help="layers, tokens per modality, width (repeatable); replaces the defaults")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {jax.device_count()} "
          f"{jax.default_backend()} device(s), jax {jax.__version__}")
    shapes = [(2, 1024, 256)] if args.quick else [(8, 4096, 1024), (2, 4096, 2048)]
    if args.shape:
        shapes = [tuple(int(v) for v in shape.split(",")) for shape in args.shape]
    for layers, n, d in shapes:
        run(layers, n, d, args.repeats, args.method)


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
