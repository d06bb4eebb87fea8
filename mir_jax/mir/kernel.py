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

import jax
import jax.numpy as jnp
import numpy as np

from mir_jax.mir.methods import (
    method_note,
    published_fast_verdict,
    resolve_method,
)
from mir_jax.mir.rules import MIRResult, _frechet_from_rows, as_row_mask, preprocess
from mir_jax.mir.uncertainty import jackknife_mir


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


@functools.partial(jax.jit, static_argnames=("method", "normalize", "remove_outliers"))
def _compute_mir_jit(vision, text, vision_mask, text_mask, method, normalize, remove_outliers):
    vision, text, _, (vision_norm, text_norm) = preprocess(vision, text, vision_mask, text_mask,
                                                           normalize, remove_outliers)
    per_layer, diagnostics = _frechet_from_rows(vision, vision_mask, text, text_mask, method)
    return MIRResult(per_layer=per_layer, overall=jnp.log10(jnp.sum(per_layer)),
                     vision_norm_per_layer=vision_norm, text_norm_per_layer=text_norm), diagnostics


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
      MIRResult(per_layer=[L] float32, overall=log10(sum(per_layer)), vision_norm_per_layer and
      text_norm_per_layer [L]: the mean norm of the valid rows as given, before both rules), with
      the interval fields filled when uncertainty is given, or (MIRResult, diagnostics) with
      return_diagnostics=True.
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
    intervals gets its standard errors and `level` intervals beside each value; one with the mean
    row norms gets them as two more columns (as given, before the rules)."""
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
    if result.vision_norm_per_layer is not None and result.text_norm_per_layer is not None:
        # Between the layer and FD columns, so that they align whatever follows FD.
        norms = [("|h| vision", "|h| text")] + [
            (f"{v:.4g}", f"{t:.4g}") for v, t in zip(np.asarray(result.vision_norm_per_layer),
                                                     np.asarray(result.text_norm_per_layer))]
        lines = [f"{line[:5]}  {v:>10}  {t:>10}{line[5:]}" for line, (v, t) in zip(lines, norms)]
        overall += "\n|h|: mean L2 norm of the layer's vision / text rows as given, before MIR's rules"
    lines.append(overall)
    if note:
        lines.append(note)
    if method == "published_fast" and diagnostics:
        lines.append(published_fast_verdict(diagnostics))
    return "\n".join(lines)
