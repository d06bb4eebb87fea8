"""The Modality Integration Rate (MIR), exactly as `docs/mir.md` defines it.

Per decoder layer, the Fréchet distance between Gaussians fitted to the vision-token and
text-token hidden states (after text-centric normalization and 3-sigma outlier replacement);
overall, log10 of their sum. `compute_mir` (all layers, one compiled program, optional
jackknife intervals), `frechet_distance` (one pair of row sets) and `format_mir` live here;
the methods for tr((Σ_V Σ_T)^{1/2}) ("auto", "eigh", "gram", "newton_schulz", and the published
"legacy_fast" / "published_fast", which are not Fréchet distances) and their precision are
in docs/mir.md, sections 5-6; the streaming form is `mir_jax.mir.streaming.MIRAccumulator`.
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
    """Fréchet distance between Gaussians fitted to the rows of x [N, D] and y [M, D] (unbiased
    covariances, float32), with optional [N] / [M] bool masks (False = padding) and `method` as in
    `compute_mir`. Returns a scalar, differentiable for "gram", and for "eigh" only when both
    covariances are nonsingular (rows > D; "auto" picks "gram" otherwise).
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
      vision: [L, N, D] vision-token hidden states of all samples (layers 1..L, no embeddings).
      text: [L, M, D] text-token hidden states.
      vision_mask / text_mask: optional [N] or [L, N] / [M] or [L, M] bool, False for padding.
      method: "auto", "eigh", "gram", "newton_schulz", or the published fast mode in closed form
        / literally, "legacy_fast" / "published_fast" (not Fréchet distances).
      normalize: text-centric normalization; remove_outliers: the 3-sigma rule.
      return_diagnostics: also return the method's diagnostics, a dict of [L] arrays ({} except
        for published_fast: "drift", "trace_drift", "condition"; `published_fast_verdict`).
      uncertainty: None, or "jackknife" for standard errors and intervals over samples
        (docs/mir.md, section 9); per_layer and overall are unchanged.
      vision_groups, text_groups: with uncertainty, concrete [N] / [M] int jackknife groups
        (0..G-1) of each row's sample (`jackknife_groups`); padding rows may hold anything.
      level: the intervals' confidence level.
    Returns:
      MIRResult (per_layer [L], overall, the mean norms [L], intervals when asked for), or
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
    """A per-layer table and the overall value as text: published modes labelled as such (with
    the rounding verdict given diagnostics), standard errors and intervals when the result has
    them, and the mean row norms as two more columns.
    """
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
