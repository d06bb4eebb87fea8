"""How far the published "fast" mode is from the Fréchet distance, layer by layer.

Run: python benchmarks/legacy_modes.py [--dim 256] [--tokens 2000]

On LLM-like hidden states (power-law spectra whose decay steepens layer by layer, rogue
dimensions, a few massive activations) this prints per layer: the true FD (float64,
after MIR's normalization and outlier rule), ours (`eigh`, float32), `legacy_fast` (the
fast mode in exact arithmetic), `published_fast` (its float32 iteration, in JAX), the
same iteration in torch and in NumPy on the same float32 covariances, and our
diagnostics (drift of tr(Y) from tr(Σ_V Σ_T), the relative change that makes in the
reported value, Frobenius condition number of Σ_V Σ_T). Where the three libraries
disagree, a published fast-mode number is rounding noise.
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from mir_jax import mir


def llm_like_layer(rng, n, d, decay, shift):
    """[n, D] float32 rows: spectrum k^-decay, 4 rogue dimensions, massive rows (1 in 500)."""
    rotation, _ = np.linalg.qr(rng.standard_normal((d, d)))
    x = (rng.standard_normal((n, d)) * np.arange(1, d + 1) ** -decay) @ rotation
    x[:, :4] = x[:, :4] * 10 + 20
    x += shift
    x[rng.choice(n, max(1, n // 500), replace=False), 4:6] += 300.0
    return x.astype(np.float32)


def preprocess64(v, t):
    """MIR's normalization and outlier rule in float64 (torch.median semantics)."""
    v, t = torch.from_numpy(v).double(), torch.from_numpy(t).double()
    scale = 1.0 / t.norm(dim=1).mean()
    out = []
    for x in (v * scale, t * scale):
        norms = x.norm(dim=1)
        x = x.clone()
        x[(norms - norms.median()).abs() > 3 * norms.std()] = x.median(dim=0).values
        out.append(x.numpy())
    return out


def fd_parts(v, t):
    cov_v, cov_t = np.cov(v, rowvar=False), np.cov(t, rowvar=False)
    delta = v.mean(0) - t.mean(0)
    return cov_v, cov_t, delta @ delta + np.trace(cov_v) + np.trace(cov_t)


def true_fd(v, t):
    cov_v, cov_t, rest = fd_parts(v, t)
    singular = np.linalg.svd(np.linalg.cholesky(cov_t).T @ np.linalg.cholesky(cov_v), compute_uv=False)
    return rest - 2 * singular.sum()


def iteration(a, inverse, eye):
    """The published five steps on A, with the given library's inverse."""
    y, z = a, eye
    for _ in range(5):
        y = 0.5 * (y + inverse(z) @ a)
        z = 0.5 * (z + inverse(y) @ a)
    return y


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--tokens", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    decays = [0.25, 0.5, 0.75, 1.0, 1.25, 1.5]
    vision = np.stack([llm_like_layer(rng, args.tokens, args.dim, k, 0.5) for k in decays])
    text = np.stack([llm_like_layer(rng, args.tokens, args.dim, k, 0.0) for k in decays])
    ours = mir.compute_mir(vision, text, method="eigh")
    legacy = mir.compute_mir(vision, text, method="legacy_fast")
    published, diagnostics = mir.compute_mir(vision, text, method="published_fast",
                                             return_diagnostics=True)
    print(f"D={args.dim}, {args.tokens} vision and {args.tokens} text tokens per layer; "
          "per-layer values after normalization and the outlier rule")
    print(f"{'layer':>5} {'decay':>5} {'true FD':>10} {'eigh':>10} {'legacy_fast':>12} "
          f"{'published':>10} {'torch':>10} {'numpy':>10} {'tr drift':>9} {'value':>9} {'cond_F':>9}")
    for layer, decay in enumerate(decays):
        v64, t64 = preprocess64(vision[layer], text[layer])
        cov_v, cov_t, rest = fd_parts(v64, t64)
        a32 = cov_v.astype(np.float32) @ cov_t.astype(np.float32)
        eye = np.eye(args.dim, dtype=np.float32)
        y_torch = iteration(torch.from_numpy(a32), torch.inverse, torch.from_numpy(eye)).numpy()
        y_numpy = iteration(a32, np.linalg.inv, eye)
        print(f"{layer + 1:>5} {decay:>5.2f} {true_fd(v64, t64):>10.4g} {float(ours.per_layer[layer]):>10.4g} "
              f"{float(legacy.per_layer[layer]):>12.4g} {float(published.per_layer[layer]):>10.4g} "
              f"{rest - 2 * np.trace(y_torch):>10.4g} {rest - 2 * np.trace(y_numpy):>10.4g} "
              f"{float(diagnostics['trace_drift'][layer]):>9.2e} {float(diagnostics['drift'][layer]):>9.2e} "
              f"{float(diagnostics['condition'][layer]):>9.2e}")
    print(mir.published_fast_verdict(diagnostics))


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
