"""Why MIR's exact route takes singular values, not the floor's eigenvalues.

Run: python benchmarks/mir_routes.py

tr((Σ_V Σ_T)^{1/2}) can be read off the eigenvalues of Lᵀ Σ_T L (Σ_V = L Lᵀ), which is
what the floor in `mir_kernel.py` times, or off the singular values of L_Tᵀ L_V,
which is what `mir_jax.mir.linalg.trace_sqrt_product_factored` does at about twice the
cost of a symmetric eigensolver. This script prints, for a few kinds of data, the
relative error of the Fréchet distance each route gives in float32 against a
float64 reference (NumPy Cholesky + SVD on the same covariances). The eigenvalue
route carries an absolute error of eps·λ_max on every eigenvalue; it is fine when
the spectrum is tame and the distance is large, and it is not when a few massive
dimensions set λ_max or when the distance is a small difference of large traces.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import scipy.linalg
from mir_kernel import llm_like_features

from mir_jax import mir
from mir_jax.mir import linalg


def float64_distance_parts(v, t):
    cov_v, cov_t = np.cov(v, rowvar=False), np.cov(t, rowvar=False)
    singular = np.linalg.svd(np.linalg.cholesky(cov_t).T @ np.linalg.cholesky(cov_v), compute_uv=False)
    delta = v.mean(0) - t.mean(0)
    rest = delta @ delta + np.trace(cov_v) + np.trace(cov_t)
    return cov_v, cov_t, rest, singular.sum()


def eigenvalue_routes(cov_v, cov_t):
    """The floor's route in float32: equilibrated Cholesky of Σ_V, eigenvalues of Lᵀ Σ_T L,
    by JAX's eigvalsh (divide and conquer with eigenvectors) and by LAPACK's values-only
    ssyevd through SciPy (which jaxlib does not expose)."""
    factor, _ = linalg._covariance_factor(cov_v)
    inner = jnp.matmul(factor.T, jnp.matmul(cov_t, factor, precision=linalg.HIGHEST), precision=linalg.HIGHEST)
    inner = linalg.symmetrize(inner)
    by_jax = np.asarray(jnp.linalg.eigvalsh(inner), np.float64)
    by_lapack = scipy.linalg.eigh(np.asarray(inner), eigvals_only=True, driver="evd").astype(np.float64)
    return [np.sqrt(np.maximum(w, 0.0)).sum() for w in (by_jax, by_lapack)]


def hidden_state_like(rng, n, d, shift, rotation, decay):
    x = (rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -decay) @ rotation
    x[:, :4] = x[:, :4] * 10 + 20
    return x + shift


def cases(rng):
    d = 1024
    v, t = llm_like_features(rng, 1, 4096, d, 0.5)[0], llm_like_features(rng, 1, 4096, d, 0.0)[0]
    v, t = v / np.linalg.norm(t, axis=1).mean(), t / np.linalg.norm(t, axis=1).mean()
    mask = jnp.ones(v.shape[0], bool)
    replaced = [np.asarray(mir.replace_outliers(jnp.asarray(x), mask)) for x in (v, t)]
    yield "benchmark features, D=1024, 3-sigma rule applied", *replaced
    yield "benchmark features, D=1024, remove_outliers=False", v, t
    for d, decay in ((256, 0.5), (512, 1.0)):
        rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
        v = hidden_state_like(rng, 4096, d, 0.0, rotation, decay)
        t = hidden_state_like(rng, 4096, d, 0.0, rotation, decay)
        yield f"well-aligned sets (same law), D={d}, spectrum i^-{2 * decay:g}", v, t


def main():
    print(f"{jax.device_count()} {jax.default_backend()} device(s), jax {jax.__version__}")
    print("relative error of the Fréchet distance in float32 vs float64, by route for tr√(Σ_V Σ_T):")
    print(f"{'data':58s} {'FD / cross':>10s} {'eig (JAX)':>10s} {'eig (LAPACK N)':>15s} {'singular (ours)':>16s}")
    for name, v, t in cases(np.random.default_rng(0)):
        v, t = np.asarray(v, np.float64), np.asarray(t, np.float64)
        cov_v, cov_t, rest, cross = float64_distance_parts(v, t)
        distance = rest - 2 * cross
        cov_v32, cov_t32 = jnp.asarray(cov_v, jnp.float32), jnp.asarray(cov_t, jnp.float32)
        by_svd = float(linalg.trace_sqrt_product_factored(cov_v32, cov_t32))
        errors = [abs((rest - 2 * c) / distance - 1) for c in (*eigenvalue_routes(cov_v32, cov_t32), by_svd)]
        print(f"{name:58s} {distance / cross:10.2e} {errors[0]:10.1e} {errors[1]:15.1e} {errors[2]:16.1e}")


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
