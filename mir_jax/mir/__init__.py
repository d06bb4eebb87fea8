"""The Modality Integration Rate (MIR, docs/mir.md): the public face of the MIR package.

    from mir_jax.mir import compute_mir, frechet_distance, MIRAccumulator, MIRResult

Modules (imports run one way, top to bottom):
  methods    the method names, the one resolver of "auto", notes and the published_fast verdict
  linalg     matrix routines: masked statistics, exact lower medians, tr((Σ_a Σ_b)^{1/2}) routes
  rules      MIRResult, normalization, the outlier rule, the Fréchet distance from rows
  uncertainty  jackknife intervals over sample groups, paired differences of two models
  kernel     compute_mir (with or without intervals) / frechet_distance in one compiled program
  streaming  MIRAccumulator: the same result in constant memory, streamed over batches
  hidden_states  MIR of hidden states dumped to safetensors files
  tokens     which positions of a batch are MIR's vision and text tokens
"""

from mir_jax.mir.kernel import compute_mir, format_mir, frechet_distance
from mir_jax.mir.methods import (
    LEGACY_NOTE,
    METHODS,
    PUBLISHED_FAST_NOTE,
    check_method,
    method_note,
    published_fast_verdict,
    resolve_method,
)
from mir_jax.mir.rules import (
    MIRResult,
    cross_term_from_covariances,
    replace_outliers,
    text_centric_scale,
)
from mir_jax.mir.streaming import MIRAccumulator
from mir_jax.mir.tokens import mir_rows, mir_token_masks
from mir_jax.mir.uncertainty import ESTIMATORS, MIRDifference, jackknife_groups, paired_difference

__all__ = [
    "ESTIMATORS",
    "LEGACY_NOTE",
    "METHODS",
    "MIRAccumulator",
    "MIRDifference",
    "MIRResult",
    "PUBLISHED_FAST_NOTE",
    "check_method",
    "compute_mir",
    "cross_term_from_covariances",
    "format_mir",
    "frechet_distance",
    "jackknife_groups",
    "method_note",
    "mir_rows",
    "mir_token_masks",
    "paired_difference",
    "published_fast_verdict",
    "replace_outliers",
    "resolve_method",
    "text_centric_scale",
]
