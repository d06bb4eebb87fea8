"""Rank correlations between a study's predictor (MIR, loss) and its score, as `scipy.stats`
defines them: Spearman's rho (ties share their mean rank) and Kendall's tau-b (ties corrected
for), in float64 NumPy. Both return NaN where undefined (fewer than two finite pairs, or a
constant variable), as scipy does.
"""

from __future__ import annotations

import numpy as np


def _finite_pairs(x, y) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"correlation of {x.size} values against {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]


def average_ranks(values) -> np.ndarray:
    """Ranks 1..n; tied values share the mean of the ranks they span ([3, 1, 3] -> [2.5, 1, 2.5])."""
    v = np.asarray(values, np.float64)
    order = np.argsort(v, kind="stable")
    ranks = np.empty(v.size, np.float64)
    sorted_v = v[order]
    start = 0
    for end in range(1, v.size + 1):
        if end == v.size or sorted_v[end] != sorted_v[start]:
            ranks[order[start:end]] = (start + end + 1) / 2.0  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x, y) -> float:
    """Spearman's rank correlation of x and y (NaN pairs dropped)."""
    x, y = _finite_pairs(x, y)
    if x.size < 2:
        return float("nan")
    rx, ry = average_ranks(x), average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx * rx).sum() * (ry * ry).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def kendall(x, y) -> float:
    """Kendall's tau-b of x and y (NaN pairs dropped): (C - D) / sqrt((P - Tx) (P - Ty)) over
    the P = n(n-1)/2 pairs, Tx / Ty the pairs tied in x / in y."""
    x, y = _finite_pairs(x, y)
    if x.size < 2:
        return float("nan")
    i, j = np.triu_indices(x.size, k=1)
    sx, sy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
    pairs = float(i.size)
    tied_x, tied_y = float((sx == 0).sum()), float((sy == 0).sum())
    denom = np.sqrt((pairs - tied_x) * (pairs - tied_y))
    return float((sx * sy).sum() / denom) if denom > 0 else float("nan")


def rank_correlations(x, y) -> dict[str, float]:
    """{"spearman", "kendall"} of x against y: the `correlation` entries of study.json."""
    return {"spearman": spearman(x, y), "kendall": kendall(x, y)}
