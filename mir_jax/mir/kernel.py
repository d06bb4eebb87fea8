"""The Modality Integration Rate (MIR), exactly as `docs/mir.md` defines it.

MIR measures how far an LVLM's vision tokens sit from its text tokens inside the
language model: per decoder layer l, the Fréchet distance between Gaussians fitted
to the vision-token and text-token hidden states, after text-centric normalization
and 3-sigma outlier replacement; overall, ``log10(Σ_l FD_l)``. Lower is better
aligned.

In one compiled program for all layers: `compute_mir` (per layer and overall) and
`frechet_distance` (one pair of row sets), with the two preprocessing rules
(`text_centric_scale`, `replace_outliers`). The streaming form is
`mir_jax.mir.streaming.MIRAccumulator`; the public names are re-exported by `mir_jax.mir`.

Methods for tr((Σ_V Σ_T)^{1/2}) (`mir_jax.mir.methods`; routines in `mir_jax.mir.linalg`):
  "eigh"          exact: factor both covariances (Cholesky; eigh when singular) and
                  sum the singular values of L₁ᵀ L₂, i.e. the square roots of the
                  eigenvalues of L₁ᵀ Σ₂ L₁, without squaring the condition number.
  "gram"          exact through the n×n nuclear norm when rows n < D.
  "newton_schulz" matmul-only iteration (TPU-friendly), 1e-3 relative tolerance.
  "auto"          newton_schulz on TPU; elsewhere gram when min(N, M) < D, else eigh.
  "legacy_fast"   NOT a Fréchet distance: what the published code's default "fast"
                  mode computes in exact arithmetic (its square-root iteration returns
                  its input): ||μ_V−μ_T||² + tr Σ_V + tr Σ_T − 2 tr(Σ_V Σ_T), in
                  closed form. Only for comparing with numbers published from it.
  "published_fast" NOT a Fréchet distance either: that five-step iteration run
                  literally in float32, so that a published fast-mode number can be
                  approached as closely as rounding allows. On ill-conditioned
                  covariance products its output is rounding noise that differs
                  between torch, JAX and NumPy; `return_diagnostics=True` says
                  whether a run was in that regime and how much it moved the
                  values (see `methods.published_fast_verdict`).

Precision: float32 with centered statistics. Against a float64 SciPy reference the
exact methods agree to 1e-4 relative per layer on well-conditioned data (N > D)
and 1e-3 on rank-deficient data (N < D); see tests/test_mir.py.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mir_jax.mir import linalg
from mir_jax.mir.methods import (
    METHODS,
    method_note,
    published_fast_diagnostics,
    published_fast_verdict,
    resolve_method,
)


class MIRResult(NamedTuple):
    """per_layer: [L] Fréchet distance per layer; overall: scalar log10(sum(per_layer)).

    The other fields are None unless compute_mir ran with uncertainty="jackknife" over G sample
    groups (docs/mir.md, section 9): per_layer_se [L] and overall_se [] standard errors,
    per_layer_interval [L, 2] and overall_interval [2] (low, high) confidence intervals at the
    requested level, and the leave-one-group-out values per_layer_replicates [G, L] and
    overall_replicates [G], which `mir_jax.mir.uncertainty.paired_difference` needs.
    """

    per_layer: jax.Array
    overall: jax.Array
    per_layer_se: jax.Array | None = None
    per_layer_interval: jax.Array | None = None
    overall_se: jax.Array | None = None
    overall_interval: jax.Array | None = None
    per_layer_replicates: jax.Array | None = None
    overall_replicates: jax.Array | None = None


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


def replace_outliers(x: jax.Array, mask: jax.Array) -> jax.Array:
    """3-sigma outlier replacement on rows [..., N, D], valid rows given by mask [..., N].

    With n_i = ||x_i||, m = lower median of n, σ = std(n, ddof=1): every valid row
    with |n_i − m| > 3σ becomes the per-column lower median row (taken before any
    replacement). Lower medians match torch.median. Padding rows are untouched and
    never counted.
    """
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


def _check_rows(name: str, a, ndim: int):
    if a.ndim != ndim:
        want = "[N, D]" if ndim == 2 else "[L, N, D]"
        raise ValueError(f"{name} must have shape {want}; got {tuple(a.shape)}")


@functools.partial(jax.jit, static_argnames=("method",))
def _frechet_distance_jit(x, y, x_mask, y_mask, method):
    return _frechet_from_rows(x, x_mask, y, y_mask, method)[0]


def frechet_distance(x, y, *, x_mask=None, y_mask=None, method: str = "auto") -> jax.Array:
    """Fréchet distance between Gaussians fitted to the rows of x and y.

    FD = ||μ_x − μ_y||² + tr Σ_x + tr Σ_y − 2 tr((Σ_x Σ_y)^{1/2}), unbiased covariances.

    Args:
      x: [N, D] rows; y: [M, D] rows (computed in float32).
      x_mask: optional [N] bool, False for padding rows; y_mask: [M] likewise.
      method: see the module docstring ("legacy_fast" is not a Fréchet distance).
    Returns:
      scalar float32. Differentiable with jax.grad for "gram" always and for "eigh"
      when both covariances are nonsingular (rows > D); with fewer rows than
      dimensions, differentiate "gram" ("auto" picks it): an eigendecomposition of a
      singular covariance has repeated zero eigenvalues, whose derivative is undefined.
    """
    x = jnp.asarray(x, jnp.float32)
    y = jnp.asarray(y, jnp.float32)
    _check_rows("x", x, 2)
    _check_rows("y", y, 2)
    if x.shape[-1] != y.shape[-1]:
        raise ValueError(f"x and y must share the feature dimension; got {x.shape} and {y.shape}")
    method = resolve_method(method, x.shape[0], y.shape[0], x.shape[1])
    x_mask = as_row_mask(x_mask, x.shape[:1], "x_mask")
    y_mask = as_row_mask(y_mask, y.shape[:1], "y_mask")
    return _frechet_distance_jit(x, y, x_mask, y_mask, method)


def preprocess(vision, text, vision_mask, text_mask, normalize: bool, remove_outliers: bool):
    """MIR's two rules (section 3, steps 1-2) on [L, N, D] / [L, M, D] rows: the rows the
    Fréchet distance sees, and the text rows after normalization, before replacement."""
    if normalize:
        scale = text_centric_scale(text, text_mask)[:, None, None]
        vision, text = vision * scale, text * scale
    scaled_text = text
    if remove_outliers:
        vision = replace_outliers(vision, vision_mask)
        text = replace_outliers(text, text_mask)
    return vision, text, scaled_text


@functools.partial(jax.jit, static_argnames=("method", "normalize", "remove_outliers"))
def _compute_mir_jit(vision, text, vision_mask, text_mask, method, normalize, remove_outliers):
    vision, text, _ = preprocess(vision, text, vision_mask, text_mask, normalize, remove_outliers)
    per_layer, diagnostics = _frechet_from_rows(vision, vision_mask, text, text_mask, method)
    return MIRResult(per_layer=per_layer, overall=jnp.log10(jnp.sum(per_layer))), diagnostics


def compute_mir(
    vision,
    text,
    *,
    vision_mask=None,
    text_mask=None,
    method: str = "auto",
    normalize: bool = True,
    remove_outliers: bool = True,
    return_diagnostics: bool = False,
    uncertainty: str | None = None,
    vision_groups=None,
    text_groups=None,
    level: float = 0.95,
):
    """MIR over all layers in one compiled program.

    Args:
      vision: [L, N, D] hidden states of the vision tokens of all samples, per layer
        (layers 1..L of HF's hidden_states; the embeddings are not a layer).
      text: [L, M, D] hidden states of the text tokens.
      vision_mask: optional [N] or [L, N] bool, False for padding rows.
      text_mask: optional [M] or [L, M] bool.
      method: "auto", "eigh", "gram", "newton_schulz", or "legacy_fast" / "published_fast"
        (the published fast mode in closed form / literally: not Fréchet distances; see
        LEGACY_NOTE and PUBLISHED_FAST_NOTE).
      normalize: text-centric normalization (scale both by 1 / mean text-row norm).
      remove_outliers: 3-sigma replacement of outlier rows by the median row.
      return_diagnostics: also return the method's diagnostics, a dict of [L] arrays, {} for
        all but published_fast, which gives "drift" (relative change of each value from its
        exact-arithmetic value, legacy_fast), "trace_drift" (of tr(Y) from tr(Σ_V Σ_T)) and
        "condition" (Frobenius condition number of Σ_V Σ_T); see `published_fast_verdict`.
      uncertainty: None (no interval), or "jackknife": standard errors and intervals over
        samples by a delete-a-group jackknife (docs/mir.md, section 9), in the same compiled
        program; per_layer and overall are then the same values as without it.
      vision_groups: with uncertainty, [N] int: the jackknife group (0..G-1) of the sample each
        vision row belongs to; text_groups: [M] int, likewise. All rows of one sample must share
        a group, in both modalities (`mir_jax.mir.uncertainty.jackknife_groups` makes them from
        sample ids). Padding rows (mask False) may hold any value. Concrete arrays: G and the
        group sizes set the compiled shapes.
      level: the intervals' confidence level.
    Returns:
      MIRResult(per_layer=[L] float32, overall=log10(sum(per_layer))), with the interval fields
      filled when uncertainty is given, or (MIRResult, diagnostics) with return_diagnostics=True.
    """
    vision = jnp.asarray(vision, jnp.float32)
    text = jnp.asarray(text, jnp.float32)
    _check_rows("vision", vision, 3)
    _check_rows("text", text, 3)
    if vision.shape[0] != text.shape[0] or vision.shape[2] != text.shape[2]:
        raise ValueError(
            f"vision {tuple(vision.shape)} and text {tuple(text.shape)} must agree on L and D"
        )
    method = resolve_method(method, vision.shape[1], text.shape[1], vision.shape[2])
    vision_mask = as_row_mask(vision_mask, vision.shape[:2], "vision_mask")
    text_mask = as_row_mask(text_mask, text.shape[:2], "text_mask")
    if uncertainty is not None:
        # Imported here: the uncertainty module builds on this one's rules and distances.
        from mir_jax.mir.uncertainty import jackknife_mir

        result, diagnostics = jackknife_mir(
            vision, text, vision_mask, text_mask, vision_groups, text_groups, method=method,
            normalize=normalize, remove_outliers=remove_outliers, estimator=uncertainty, level=level)
    elif vision_groups is not None or text_groups is not None:
        raise ValueError("vision_groups/text_groups are only used with uncertainty='jackknife'")
    else:
        result, diagnostics = _compute_mir_jit(vision, text, vision_mask, text_mask, method,
                                               normalize, remove_outliers)
    return (result, diagnostics) if return_diagnostics else result


def format_mir(result: MIRResult, method: str = "auto", diagnostics: dict | None = None,
               level: float = 0.95) -> str:
    """A per-layer table and the overall value as text (the published modes labelled as such;
    for published_fast with its diagnostics, the rounding-regime verdict too). A result with
    intervals gets its standard errors and `level` intervals beside each value."""
    per_layer = np.asarray(result.per_layer)
    note = method_note(method)
    label = f"FD ({method}, not a Fréchet distance)" if note else "FD"
    lines = [f"{'layer':>5}  {label}"]
    overall = f"MIR overall = log10(sum) = {float(result.overall):.6f}"
    if result.per_layer_se is None:
        lines += [f"{i + 1:>5}  {v:.6g}" for i, v in enumerate(per_layer)]
    else:
        groups = np.shape(result.per_layer_replicates)[0]
        lines[0] += f"  (SE, {100 * level:g} % interval: jackknife over {groups} sample groups)"
        lines += [f"{i + 1:>5}  {v:.6g}  (SE {se:.3g}, [{lo:.6g}, {hi:.6g}])" for i, (v, se, (lo, hi))
                  in enumerate(zip(per_layer, np.asarray(result.per_layer_se),
                                   np.asarray(result.per_layer_interval)))]
        lo, hi = np.asarray(result.overall_interval)
        overall += f"  (SE {float(result.overall_se):.3g}, [{lo:.6f}, {hi:.6f}])"
    lines.append(overall)
    if note:
        lines.append(note)
    if method == "published_fast" and diagnostics:
        lines.append(published_fast_verdict(diagnostics))
    return "\n".join(lines)
