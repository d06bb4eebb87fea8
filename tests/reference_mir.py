"""An independent NumPy/SciPy float64 transcription of shared/spec/mir.md, for tests.

Written from the spec alone, loop by loop, with no code shared with mir_jax.
"""

import numpy as np
import scipy.linalg


def torch_lower_median(values, axis=0):
    """torch.median semantics: the element of rank (n-1)//2 in sorted order."""
    values = np.sort(np.asarray(values, np.float64), axis=axis)
    n = values.shape[axis]
    return np.take(values, (n - 1) // 2, axis=axis)


def normalize(v, t):
    s = 1.0 / np.mean(np.linalg.norm(t, axis=1))
    return v * s, t * s


def replace_outliers(x):
    x = np.array(x, np.float64)
    norms = np.linalg.norm(x, axis=1)
    m = torch_lower_median(norms)
    sigma = np.std(norms, ddof=1)
    median_row = torch_lower_median(x, axis=0)
    out = np.abs(norms - m) > 3 * sigma
    x[out] = median_row
    return x


def trace_sqrt_sqrtm(cov_a, cov_b):
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float(np.real(np.trace(root)))


def trace_sqrt_nuclear(a, b):
    ac = a - a.mean(0)
    bc = b - b.mean(0)
    c = ac @ bc.T / np.sqrt((len(a) - 1) * (len(b) - 1))
    return float(np.linalg.svd(c, compute_uv=False).sum())


def frechet(a, b, route="auto"):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    mu = a.mean(0) - b.mean(0)
    cov_a = np.cov(a, rowvar=False, ddof=1)
    cov_b = np.cov(b, rowvar=False, ddof=1)
    if route == "auto":
        route = "nuclear" if min(len(a), len(b)) < a.shape[1] else "sqrtm"
    if route == "sqrtm":
        cross = trace_sqrt_sqrtm(cov_a, cov_b)
    elif route == "nuclear":
        cross = trace_sqrt_nuclear(a, b)
    elif route == "legacy_fast":
        cross = float(np.trace(cov_a @ cov_b))
    else:
        raise ValueError(route)
    return float(mu @ mu + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def mir(vision_layers, text_layers, normalize_=True, remove_outliers=True, route="auto"):
    """vision_layers/text_layers: lists (one per layer) of [n_l, D] arrays of valid rows."""
    per_layer = []
    for v, t in zip(vision_layers, text_layers):
        v = np.asarray(v, np.float64)
        t = np.asarray(t, np.float64)
        if normalize_:
            v, t = normalize(v, t)
        if remove_outliers:
            v, t = replace_outliers(v), replace_outliers(t)
        per_layer.append(frechet(v, t, route))
    per_layer = np.array(per_layer)
    return per_layer, float(np.log10(per_layer.sum()))
