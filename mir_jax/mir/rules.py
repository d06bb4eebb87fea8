"""What every MIR route shares (`compute_mir`, its jackknife, the streaming accumulator): the
result type, the two preprocessing rules (text-centric scale, 3-sigma outlier replacement) and
the Fréchet distance from rows or covariances, batched over leading dimensions. docs/mir.md,
section 3, defines them; `mir_jax.mir.kernel` says which method computes what.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from mir_jax.mir import linalg
from mir_jax.mir.methods import METHODS, published_fast_diagnostics


class MIRResult(NamedTuple):
    """per_layer: [L] Fréchet distance per layer; overall: scalar log10(sum(per_layer)).

    With uncertainty="jackknife" over G sample groups (docs/mir.md, section 9): per_layer_se [L],
    overall_se [], per_layer_interval [L, 2], overall_interval [2], and the replicates
    per_layer_replicates [G, L], overall_replicates [G]; None otherwise.
    vision_norm_per_layer / text_norm_per_layer [L]: mean Euclidean norm of the valid rows as
    given (before both rules), to tell scale from alignment (docs/mir.md, section 4).
    """

    per_layer: jax.Array
    overall: jax.Array
    per_layer_se: jax.Array | None = None
    per_layer_interval: jax.Array | None = None
    overall_se: jax.Array | None = None
    overall_interval: jax.Array | None = None
    per_layer_replicates: jax.Array | None = None
    overall_replicates: jax.Array | None = None
    vision_norm_per_layer: jax.Array | None = None
    text_norm_per_layer: jax.Array | None = None


# --------------------------------------------------------------------------------------
# The two MIR preprocessing rules.
# --------------------------------------------------------------------------------------


def _masked_norm_stats(norms: jax.Array, mask: jax.Array):
    """Count, mean and unbiased std (ddof=1) of norms [..., N] over valid rows."""
    w = mask.astype(norms.dtype)
    count = jnp.sum(w, axis=-1)
    mean = jnp.sum(norms * w, axis=-1) / jnp.maximum(count, 1.0)
    var = jnp.sum(((norms - mean[..., None]) * w) ** 2, axis=-1) / jnp.maximum(count - 1.0, 1.0)
    return count, mean, jnp.sqrt(var)


def text_centric_scale(text: jax.Array, text_mask: jax.Array) -> jax.Array:
    """s = 1 / mean_i ||T_i||_2 over valid text rows. text: [..., M, D] -> [...]."""
    norms = jnp.linalg.norm(text, axis=-1)
    _, mean, _ = _masked_norm_stats(norms, text_mask)
    return 1.0 / mean


def outlier_rows(norms: jax.Array, mask: jax.Array, median_norm: jax.Array, std: jax.Array) -> jax.Array:
    """The 3-sigma rule: valid rows with |n_i − m| > 3σ. norms/mask [..., N]; m, σ [...]."""
    return mask & (jnp.abs(norms - median_norm[..., None]) > 3.0 * std[..., None])


def replace_outliers(x: jax.Array, mask: jax.Array, norms: jax.Array | None = None) -> jax.Array:
    """3-sigma outlier replacement on rows [..., N, D], valid rows given by mask [..., N].

    With n_i = ||x_i||, m = lower median of n, σ = std(n, ddof=1): every valid row
    with |n_i − m| > 3σ becomes the per-column lower median row (taken before any
    replacement). Lower medians match torch.median. Padding rows are untouched and
    never counted. norms: optional [..., N] row norms already at hand (not recomputed).
    """
    if norms is None:
        norms = jnp.linalg.norm(x, axis=-1)
    median_norm = linalg.masked_lower_median(norms[..., None], mask)[..., 0]
    _, _, std = _masked_norm_stats(norms, mask)
    outlier = outlier_rows(norms, mask, median_norm, std)
    median_row = linalg.masked_lower_median(x, mask)
    return jnp.where(outlier[..., None], median_row[..., None, :], x)


# --------------------------------------------------------------------------------------
# Fréchet distance on rows (batched over leading dimensions).
# --------------------------------------------------------------------------------------


def _frechet_from_rows(x, x_mask, y, y_mask, method: str) -> tuple[jax.Array, dict]:
    """FD [...] between Gaussians fitted to valid rows of x [..., N, D] and y [..., M, D],
    and the method's diagnostics (see `cross_term_from_covariances`)."""
    n_x, mean_x, cent_x = linalg.masked_mean_and_centered(x, x_mask)
    n_y, mean_y, cent_y = linalg.masked_mean_and_centered(y, y_mask)
    mean_term = jnp.sum((mean_x - mean_y) ** 2, axis=-1)
    # tr Σ = ||X_c||_F² / (n-1): no D×D matrix needed for the traces.
    trace_x = jnp.sum(cent_x * cent_x, axis=(-2, -1)) / jnp.maximum(n_x - 1.0, 1.0)
    trace_y = jnp.sum(cent_y * cent_y, axis=(-2, -1)) / jnp.maximum(n_y - 1.0, 1.0)
    if method == "gram":
        cross, diagnostics = linalg.trace_sqrt_product_gram(cent_x, n_x, cent_y, n_y), {}
    else:
        cov_x = linalg.covariance_from_centered(cent_x, n_x)
        cov_y = linalg.covariance_from_centered(cent_y, n_y)
        cross, diagnostics = cross_term_from_covariances(cov_x, cov_y, method)
    per_layer = mean_term + trace_x + trace_y - 2.0 * cross
    return per_layer, published_fast_diagnostics(per_layer, cross, diagnostics)


def cross_term_from_covariances(cov_x, cov_y, method: str) -> tuple[jax.Array, dict]:
    """The cross term from [..., D, D] covariances, and the method's diagnostics.

    tr((Σ_x Σ_y)^{1/2}) for the exact methods and newton_schulz; tr(Σ_x Σ_y) for
    legacy_fast; the published iteration's tr(Y) for published_fast, whose diagnostics
    are {"trace_product": tr(Σ_x Σ_y), "condition": κ_F} (see `linalg.published_fast_trace`);
    {} otherwise.
    """
    if method == "legacy_fast":
        return linalg.trace_product(cov_x, cov_y), {}
    if method == "published_fast":
        trace, trace_product, condition = linalg.published_fast_trace(cov_x, cov_y)
        return trace, {"trace_product": trace_product, "condition": condition}
    if method == "newton_schulz":
        return linalg.trace_sqrt_product_newton_schulz(cov_x, cov_y), {}
    if method in ("eigh", "gram"):  # gram needs rows; from covariances it is eigh.
        return linalg.trace_sqrt_product_factored(cov_x, cov_y), {}
    raise ValueError(f"unknown MIR method {method!r}; expected one of {METHODS}")


def as_row_mask(mask, shape_prefix: tuple[int, ...], name: str) -> jax.Array:
    """Validates a row mask and broadcasts it to shape_prefix ([N] or [L, N])."""
    if mask is None:
        return jnp.ones(shape_prefix, bool)
    mask = jnp.asarray(mask)
    if mask.shape not in (shape_prefix, shape_prefix[-1:]):
        raise ValueError(f"{name} has shape {mask.shape}; expected {shape_prefix[-1:]} or {shape_prefix}")
    return jnp.broadcast_to(mask.astype(bool), shape_prefix)


def preprocess(vision, text, vision_mask, text_mask, normalize: bool, remove_outliers: bool):
    """MIR's two rules (docs/mir.md, section 3, steps 1-2) on [L, N, D] / [L, M, D] rows.

    Returns (vision, text, text_norms, (vision_norm, text_norm)): the rows the Fréchet distance
    sees; the text-row norms [L, M] after normalization, before replacement (the jackknife's
    per-replicate scale); and the mean norms [L] of the valid rows as given.
    """
    vision_norms = jnp.linalg.norm(vision, axis=-1)
    text_norms = jnp.linalg.norm(text, axis=-1)
    _, vision_norm, _ = _masked_norm_stats(vision_norms, vision_mask)
    _, text_norm, _ = _masked_norm_stats(text_norms, text_mask)
    if normalize:
        scale = 1.0 / text_norm  # text_centric_scale, from the norms at hand
        vision, text = vision * scale[:, None, None], text * scale[:, None, None]
        # ||s·x|| = s·||x||: the outlier rule is scale-invariant, as in the streaming route.
        vision_norms, text_norms = vision_norms * scale[:, None], text_norms * scale[:, None]
    if remove_outliers:
        vision = replace_outliers(vision, vision_mask, vision_norms)
        text = replace_outliers(text, text_mask, text_norms)
    return vision, text, text_norms, (vision_norm, text_norm)
