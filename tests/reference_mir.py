"""An independent NumPy/SciPy float64 transcription of docs/mir.md, for tests.

Written from the definition alone, loop by loop, with no code shared with mir_jax; and
`published_fast_mir`, a torch float32 transcription of the published tool's fast mode.
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


def published_fast_mir(vision_layers, text_layers):
    """The published tool's default ("fast") mode, step by step in torch float32.

    Per layer: scale both sets by 1 / mean text-row norm; replace 3-sigma outlier rows
    by the column-wise torch.median row; means and unbiased covariances; then five steps
    of Y <- (Y + inv(Z) A) / 2, Z <- (Z + inv(Y) A) / 2 from Y = A = cov_v cov_t, Z = I;
    FD = |mu_v - mu_t|^2 + tr cov_v + tr cov_t - 2 tr Y. Returns ([L] per layer, overall).
    """
    import torch

    def outliers(x):
        norms = torch.norm(x, p=2, dim=-1)
        out = torch.abs(norms - torch.median(norms)) > 3 * torch.std(norms)
        x = x.clone()
        x[out, :] = torch.median(x, dim=0).values
        return x

    per_layer = []
    for v, t in zip(vision_layers, text_layers):
        v = torch.as_tensor(np.asarray(v, np.float32))
        t = torch.as_tensor(np.asarray(t, np.float32))
        scale = 1.0 / t.norm(p=2, dim=-1).mean(0)
        v, t = outliers(v * scale), outliers(t * scale)
        mu_v, mu_t = v.mean(0), t.mean(0)
        cov_v = (v - mu_v).T @ (v - mu_v) / (v.shape[0] - 1)
        cov_t = (t - mu_t).T @ (t - mu_t) / (t.shape[0] - 1)
        a = cov_v @ cov_t
        y, z = a, torch.eye(a.shape[0])
        for _ in range(5):
            y = 0.5 * (y + torch.inverse(z) @ a)
            z = 0.5 * (z + torch.inverse(y) @ a)
        fd = torch.sum((mu_v - mu_t) ** 2) + torch.trace(cov_v) + torch.trace(cov_t) - 2 * torch.trace(y)
        per_layer.append(float(fd))
    per_layer = np.array(per_layer)
    return per_layer, float(np.log10(per_layer.sum()))
