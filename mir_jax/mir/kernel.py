"""The Modality Integration Rate (MIR), exactly as `docs/mir.md` defines it.

MIR measures how far an LVLM's vision tokens sit from its text tokens inside the
language model: per decoder layer l, the Fréchet distance between Gaussians fitted
to the vision-token and text-token hidden states, after text-centric normalization
and 3-sigma outlier replacement; overall, ``log10(Σ_l FD_l)``. Lower is better
aligned.

Public API (stable):
  frechet_distance(x, y, *, x_mask=None, y_mask=None, method="auto") -> scalar
  compute_mir(vision, text, *, vision_mask=None, text_mask=None, method="auto",
              normalize=True, remove_outliers=True) -> MIRResult(per_layer, overall)
  MIRAccumulator: the same result in constant memory, streamed over batches.

Methods for tr((Σ_V Σ_T)^{1/2}) (see `mir_jax.linalg`):
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
                  values (see `published_fast_verdict`).

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

from mir_jax import linalg

METHODS = ("auto", "eigh", "gram", "newton_schulz", "legacy_fast", "published_fast")
LEGACY_NOTE = (
    "legacy_fast is the published code's 'fast' mode in exact arithmetic: tr(Σ_V Σ_T) stands "
    "in for tr((Σ_V Σ_T)^{1/2}), so the value is NOT a Fréchet distance."
)
PUBLISHED_FAST_NOTE = (
    "published_fast runs the published code's five-step 'fast' iteration literally in float32: "
    "the value is NOT a Fréchet distance, and on ill-conditioned covariance products it is "
    "rounding-dependent, so it is not reproducible across hardware or libraries."
)
# Above this ε_float32 · κ_F(Σ_V Σ_T) the published iteration's tr(Y) is set by rounding; above
# this relative change of a reported value, that rounding shows in the result (docs/mir.md,
# "The two published modes").
ROUNDING_CONDITION = 1e-2
ROUNDING_DRIFT = 1e-3


class MIRResult(NamedTuple):
    """per_layer: [L] Fréchet distance per layer; overall: scalar log10(sum(per_layer))."""

    per_layer: jax.Array
    overall: jax.Array


def check_method(method: str) -> str:
    """method, or a ValueError naming the known ones."""
    if method not in METHODS:
        raise ValueError(f"unknown MIR method {method!r}; expected one of {METHODS}")
    return method


def resolve_method(method: str, n_rows_a: int | None = None, n_rows_b: int | None = None,
                   dim: int | None = None) -> str:
    """The one rule that turns "auto" into a concrete method (compute_mir and MIRAccumulator).

    newton_schulz on TPU (its eigensolvers are slow; matmuls are not); elsewhere gram when
    the rows are at hand (all three sizes given) and min(N, M) < D, else eigh. The streaming
    accumulator keeps covariances, not rows, so it passes no sizes. "gram" without rows is
    computed as "eigh" (the same exact trace from the covariances).
    """
    check_method(method)
    have_rows = None not in (n_rows_a, n_rows_b, dim)
    if method == "gram" and not have_rows:
        return "eigh"
    if method != "auto":
        return method
    if jax.default_backend() == "tpu":
        return "newton_schulz"
    return "gram" if have_rows and min(n_rows_a, n_rows_b) < dim else "eigh"


def published_fast_verdict(diagnostics: dict) -> str:
    """One line: was this published_fast run in the regime where rounding sets the result?

    diagnostics: {"drift", "trace_drift", "condition"} ([L] each) from
    compute_mir(..., return_diagnostics=True) or MIRAccumulator.diagnostics.
    """
    drift = np.asarray(diagnostics["drift"], np.float64)
    trace_drift = np.asarray(diagnostics["trace_drift"], np.float64)
    condition = np.asarray(diagnostics["condition"], np.float64)
    eps = float(np.finfo(np.float32).eps)
    noisy = (condition * eps > ROUNDING_CONDITION) | ~np.isfinite(condition)
    worst = int(np.nanargmax(drift)) if np.isfinite(drift).any() else 0
    if not noisy.any():
        return ("published_fast: every covariance product is well conditioned (Frobenius "
                f"condition <= {np.nanmax(condition):.3g}): the iteration stays at its exact-"
                f"arithmetic value, legacy_fast (values moved by at most {drift[worst]:.2g}).")
    layers = ", ".join(str(i + 1) for i in np.flatnonzero(noisy))
    line = (f"published_fast: layers {layers} are in the rounding-noise regime (ε·κ_F > "
            f"{ROUNDING_CONDITION:g}, κ_F up to {np.nanmax(condition):.3g}): the iteration's "
            f"tr(Y) moved up to {100 * np.nanmax(trace_drift):.3g} % off tr(Σ_V Σ_T), which moved "
            f"the reported values by up to {100 * drift[worst]:.3g} % (layer {worst + 1}). ")
    if np.nanmax(drift) > ROUNDING_DRIFT:
        return line + "Those values depend on the hardware and library and are not reproducible."
    return line + (f"That is below {100 * ROUNDING_DRIFT:g} %: the values are reproducible to about "
                   "that, though the iteration itself is not.")


def _published_fast_diagnostics(per_layer, cross, diagnostics) -> dict:
    """Relative drifts of published_fast's trace and of the reported value from legacy_fast."""
    if "trace_product" not in diagnostics:
        return diagnostics
    trace_a = diagnostics["trace_product"]
    shift = jnp.abs(cross - trace_a)
    tiny = jnp.finfo(per_layer.dtype).tiny
    exact_value = per_layer + 2.0 * (cross - trace_a)  # the same layer by legacy_fast
    return {"drift": 2.0 * shift / jnp.maximum(jnp.abs(exact_value), tiny),
            "trace_drift": shift / jnp.maximum(jnp.abs(trace_a), tiny),
            "condition": diagnostics["condition"]}


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
    return per_layer, _published_fast_diagnostics(per_layer, cross, diagnostics)


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


def _as_mask(mask, shape_prefix: tuple[int, ...], name: str) -> jax.Array:
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
    x_mask = _as_mask(x_mask, x.shape[:1], "x_mask")
    y_mask = _as_mask(y_mask, y.shape[:1], "y_mask")
    return _frechet_distance_jit(x, y, x_mask, y_mask, method)


@functools.partial(jax.jit, static_argnames=("method", "normalize", "remove_outliers"))
def _compute_mir_jit(vision, text, vision_mask, text_mask, method, normalize, remove_outliers):
    if normalize:
        scale = text_centric_scale(text, text_mask)[:, None, None]
        vision, text = vision * scale, text * scale
    if remove_outliers:
        vision = replace_outliers(vision, vision_mask)
        text = replace_outliers(text, text_mask)
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
    Returns:
      MIRResult(per_layer=[L] float32, overall=log10(sum(per_layer))), or
      (MIRResult, diagnostics) with return_diagnostics=True.
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
    vision_mask = _as_mask(vision_mask, vision.shape[:2], "vision_mask")
    text_mask = _as_mask(text_mask, text.shape[:2], "text_mask")
    result, diagnostics = _compute_mir_jit(vision, text, vision_mask, text_mask, method,
                                           normalize, remove_outliers)
    return (result, diagnostics) if return_diagnostics else result


def method_note(method: str) -> str | None:
    """The warning that must accompany every value of a method that is not a Fréchet distance."""
    return {"legacy_fast": LEGACY_NOTE, "published_fast": PUBLISHED_FAST_NOTE}.get(method)


def format_mir(result: MIRResult, method: str = "auto", diagnostics: dict | None = None) -> str:
    """A per-layer table and the overall value as text (the published modes labelled as such;
    for published_fast with its diagnostics, the rounding-regime verdict too)."""
    per_layer = np.asarray(result.per_layer)
    note = method_note(method)
    label = f"FD ({method}, not a Fréchet distance)" if note else "FD"
    lines = [f"{'layer':>5}  {label}"]
    lines += [f"{i + 1:>5}  {v:.6g}" for i, v in enumerate(per_layer)]
    lines.append(f"MIR overall = log10(sum) = {float(result.overall):.6f}")
    if note:
        lines.append(note)
    if method == "published_fast" and diagnostics:
        lines.append(published_fast_verdict(diagnostics))
    return "\n".join(lines)


from mir_jax.mir_stream import MIRAccumulator  # noqa: E402  (re-exported public name)

__all__ = [
    "METHODS",
    "MIRAccumulator",
    "MIRResult",
    "check_method",
    "compute_mir",
    "format_mir",
    "frechet_distance",
    "method_note",
    "published_fast_verdict",
    "replace_outliers",
    "resolve_method",
    "text_centric_scale",
]
