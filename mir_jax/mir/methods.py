"""MIR's methods for the cross term: their names, the one rule that resolves "auto", and
what must be said beside the two that are not Fréchet distances (see docs/mir.md, section 5
and 6). Used by the kernel (`compute_mir`), the streaming accumulator and the CLIs.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from mir_jax.models import backend

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


def check_method(method: str) -> str:
    """method, or a ValueError naming the known ones."""
    if method not in METHODS:
        raise ValueError(f"unknown MIR method {method!r}; expected one of {METHODS}")
    return method


def resolve_method(method: str, n_rows_a: int | None = None, n_rows_b: int | None = None,
                   dim: int | None = None) -> str:
    """The one rule that turns "auto" into a concrete method: newton_schulz on TPU, else gram when
    all three sizes are given and min(N, M) < D, else eigh; "gram" without rows (the streaming
    accumulator passes none) is computed as "eigh".
    """
    check_method(method)
    have_rows = None not in (n_rows_a, n_rows_b, dim)
    if method == "gram" and not have_rows:
        return "eigh"
    if method != "auto":
        return method
    if backend.on_tpu():
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


def published_fast_diagnostics(per_layer, cross, diagnostics) -> dict:
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


def method_note(method: str) -> str | None:
    """The warning that must accompany every value of a method that is not a Fréchet distance."""
    return {"legacy_fast": LEGACY_NOTE, "published_fast": PUBLISHED_FAST_NOTE}.get(method)
