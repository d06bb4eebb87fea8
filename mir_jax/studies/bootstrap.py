"""Bootstrap intervals of a study's rank correlations over its seeds.

Point values are computed on each variant's mean over seeds; the interval resamples each
variant's seeds with replacement (predictor and score together), recomputes the means and the
coefficients, and takes the percentile interval, leaving out resamples where a coefficient is
undefined. It equals `scipy.stats.bootstrap(..., paired=False, method="percentile")` with one
sample per variant, draw for draw (tests/test_study_seeds.py), in NumPy only (why, and the
method in full: docs/evaluation.md, docs/studies.md).
"""

from __future__ import annotations

import numpy as np

N_BOOTSTRAP = 2000
CONFIDENCE = 0.95
SEED = 0  # fixed: the same study.json gives the same intervals


def average_ranks_rows(values) -> np.ndarray:
    """(B, n) -> (B, n): each row's ranks 1..n, ties sharing their mean rank (as `average_ranks`)."""
    v = np.asarray(values, np.float64)
    less = (v[:, None, :] < v[:, :, None]).sum(-1)    # [b, i]: how many of row b are below v[b, i]
    equal = (v[:, None, :] == v[:, :, None]).sum(-1)  # [b, i]: how many equal it, itself included
    return less + (equal + 1) / 2.0


def spearman_rows(x, y) -> np.ndarray:
    """(B, n), (B, n) -> (B,): Spearman's rho of each row pair; NaN where a row is constant."""
    rx, ry = average_ranks_rows(x), average_ranks_rows(y)
    rx, ry = rx - rx.mean(-1, keepdims=True), ry - ry.mean(-1, keepdims=True)
    denom = np.sqrt((rx * rx).sum(-1) * (ry * ry).sum(-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (rx * ry).sum(-1) / np.where(denom > 0, denom, 1.0), np.nan)


def kendall_rows(x, y) -> np.ndarray:
    """(B, n), (B, n) -> (B,): Kendall's tau-b of each row pair; NaN where a row is constant."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    i, j = np.triu_indices(x.shape[-1], k=1)
    sx, sy = np.sign(x[:, i] - x[:, j]), np.sign(y[:, i] - y[:, j])
    pairs = float(i.size)
    denom = np.sqrt((pairs - (sx == 0).sum(-1)) * (pairs - (sy == 0).sum(-1)))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, (sx * sy).sum(-1) / np.where(denom > 0, denom, 1.0), np.nan)


def resampled_means(groups, n_bootstrap: int, rng: np.random.Generator) -> np.ndarray:
    """groups: V arrays of shape (n_v, C) (a variant's seeds, C values each) -> (B, V, C): each
    variant's mean over n_v of its seeds drawn with replacement, B times."""
    out = []
    for g in groups:
        g = np.asarray(g, np.float64)
        if g.shape[0] == 1:  # one seed: nothing to draw (and the draw would take no randomness)
            out.append(np.broadcast_to(g[0], (n_bootstrap, g.shape[1])))
            continue
        idx = rng.integers(0, g.shape[0], (n_bootstrap, g.shape[0]))
        out.append(np.stack([g[:, c][idx].mean(-1) for c in range(g.shape[1])], axis=-1))
    return np.stack(out, axis=1)


def percentile_interval(values, confidence: float = CONFIDENCE) -> list[float] | None:
    """[lo, hi]: the linear-interpolation quantiles at (1 - confidence) / 2 and 1 - that of the
    finite `values`; None if none is finite."""
    v = np.asarray(values, np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(v, [alpha, 1.0 - alpha])
    return [float(lo), float(hi)]


def correlation_intervals(groups, *, n_bootstrap: int = N_BOOTSTRAP, confidence: float = CONFIDENCE,
                          seed: int = SEED) -> dict[str, list[float] | None]:
    """{"spearman": [lo, hi], "kendall": [lo, hi]}: percentile bootstrap intervals of the rank
    correlation of predictor and score over variants.

    groups: one array per variant, shape (n_v, 2): its seeds' (predictor, score). Both entries
    are None with fewer than two variants or when no variant has two seeds (nothing to resample).
    """
    groups = [np.asarray(g, np.float64).reshape(-1, 2) for g in groups]
    if len(groups) < 2 or all(g.shape[0] < 2 for g in groups) or any(g.shape[0] == 0 for g in groups):
        return {"spearman": None, "kendall": None}
    means = resampled_means(groups, n_bootstrap, np.random.default_rng(seed))  # (B, V, 2)
    x, y = means[..., 0], means[..., 1]
    return {"spearman": percentile_interval(spearman_rows(x, y), confidence),
            "kendall": percentile_interval(kendall_rows(x, y), confidence)}
