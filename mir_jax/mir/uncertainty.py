"""How much MIR depends on the choice of samples: a delete-a-group jackknife over samples.

The unit is the sample (its tokens are not independent); replicate g is MIR without group g,
computed from per-group moments so that a replicate costs one D×D factorization and no new
pass over the rows, all in the plain computation's compiled program. Estimator, cost and
why: docs/mir.md, section 9. Public: `jackknife_groups`, `jackknife_mir`,
`jackknife_interval`, `paired_difference`, `MIRDifference`.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from mir_jax.mir import linalg
from mir_jax.mir.rules import MIRResult, _frechet_from_rows, cross_term_from_covariances, preprocess

ESTIMATORS = ("jackknife",)


# --------------------------------------------------------------------------------------
# Groups of samples.
# --------------------------------------------------------------------------------------


def jackknife_groups(vision_samples, text_samples, num_groups: int = 10):
    """Group ids for `compute_mir(..., uncertainty="jackknife")` from per-row sample ids.

    The distinct sample ids of both modalities, sorted, are dealt round-robin into num_groups
    groups, so sizes differ by at most one sample. vision_samples [N], text_samples [M] int
    (negative for padding); num_groups: 2..number of samples. Returns (vision_groups [N],
    text_groups [M]) int32, -1 where the sample id was negative.
    """
    vision_samples = np.asarray(vision_samples).astype(np.int64)
    text_samples = np.asarray(text_samples).astype(np.int64)
    ids = np.unique(np.concatenate([vision_samples, text_samples]))
    ids = ids[ids >= 0]
    if not 2 <= num_groups <= len(ids):
        raise ValueError(f"num_groups={num_groups}: need 2 <= G <= the number of samples ({len(ids)})")

    def groups(samples):
        rank = np.searchsorted(ids, samples)
        return np.where(samples >= 0, rank % num_groups, -1).astype(np.int32)

    return groups(vision_samples), groups(text_samples)


def _group_layout(groups: np.ndarray, num_groups: int):
    """Row indices of each group, padded: (index [G, n_max] int32, slot_valid [G, n_max] bool)."""
    members = [np.flatnonzero(groups == g) for g in range(num_groups)]
    width = max(len(m) for m in members)
    index = np.zeros((num_groups, width), np.int32)
    valid = np.zeros((num_groups, width), bool)
    for g, m in enumerate(members):
        index[g, :len(m)] = m
        valid[g, :len(m)] = True
    return index, valid


def _check_groups(name: str, groups, mask: np.ndarray) -> np.ndarray:
    """groups as an [N] int array; a one-line ValueError when a valid row has no group."""
    if groups is None:
        raise ValueError(f"uncertainty needs {name}: the sample group of every row ([N] ints)")
    groups = np.asarray(groups)
    if groups.shape != mask.shape[-1:] or not np.issubdtype(groups.dtype, np.integer):
        raise ValueError(f"{name} must be an integer array of shape {mask.shape[-1:]}; "
                         f"got {groups.dtype} {groups.shape}")
    bad = mask.any(axis=0) & (groups < 0)
    if bad.any():
        raise ValueError(f"{name}: row {int(np.flatnonzero(bad)[0])} is a valid row with a negative group")
    return groups


def _checked_layouts(vision_mask, text_mask, vision_groups, text_groups):
    """Validates the groups against the [L, N]/[L, M] masks; the layouts and G."""
    vision_mask, text_mask = np.asarray(vision_mask), np.asarray(text_mask)
    vision_groups = _check_groups("vision_groups", vision_groups, vision_mask)
    text_groups = _check_groups("text_groups", text_groups, text_mask)
    num_groups = int(max(vision_groups.max(initial=-1), text_groups.max(initial=-1))) + 1
    if num_groups < 2:
        raise ValueError(f"the jackknife needs at least 2 sample groups; got {num_groups}")
    for name, groups, mask in (("vision", vision_groups, vision_mask), ("text", text_groups, text_mask)):
        one_hot = groups[None, :] == np.arange(num_groups)[:, None]  # [G, N]
        counts = (mask[:, None, :] & one_hot[None]).sum(-1)  # [L, G]
        layer, group = np.unravel_index(np.argmin(counts), counts.shape)
        if counts[layer, group] == 0:
            raise ValueError(f"sample group {group} has no valid {name} row in layer {layer + 1}; "
                             f"groups must be 0..G-1 with rows of both modalities in each")
        if (mask.sum(-1)[:, None] - counts).min() < 2:
            raise ValueError(f"leaving one group out leaves fewer than 2 {name} rows; use more samples")
    layouts = _group_layout(vision_groups, num_groups) + _group_layout(text_groups, num_groups)
    return tuple(jnp.asarray(a) for a in (vision_groups, text_groups) + layouts), num_groups


# --------------------------------------------------------------------------------------
# The estimator.
# --------------------------------------------------------------------------------------


def t_quantile(level: float, num_groups: int) -> float:
    """Two-sided Student-t quantile for a jackknife over G groups (G-1 degrees of freedom)."""
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1); got {level}")
    import scipy.stats  # here, not at the top: it costs every importer of mir_jax.mir ~1 s

    return float(scipy.stats.t.ppf(0.5 + level / 2.0, num_groups - 1))


def jackknife_interval(estimate, replicates, quantile, xp=jnp):
    """Delete-a-group jackknife on any statistic: estimate [...] on all samples, replicates
    [G, ...] without group g, quantile the t quantile, xp jnp or np.

    Returns (se [...], interval [..., 2]): se² = (G-1)/G Σ_g (θ_g − θ̄)², interval
    θ_J ± quantile·se around θ_J = G θ − (G-1) θ̄.
    """
    num_groups = replicates.shape[0]
    mean = xp.mean(replicates, axis=0)
    se = xp.sqrt((num_groups - 1) / num_groups * xp.sum((replicates - mean) ** 2, axis=0))
    centre = num_groups * estimate - (num_groups - 1) * mean
    return se, xp.stack([centre - quantile * se, centre + quantile * se], axis=-1)


def _group_moments(x, mask, index, slot_valid):
    """Per-group statistics of one layer's rows x [N, D] (mask [N]) about the full mean.

    Returns count [G], sums [G, D], the full mean [D], second moments about it [G, D, D] and
    their traces [G]. Each row enters one group's Gram, so together they cost one Gram.
    """
    rows = x[index]  # [G, n_max, D]
    weights = (slot_valid & mask[index]).astype(x.dtype)
    count = jnp.sum(weights, axis=-1)
    sums = jnp.einsum("gn,gnd->gd", weights, rows, precision=linalg.HIGHEST)
    mean = jnp.sum(sums, axis=0) / jnp.sum(count)
    centered = (rows - mean) * weights[..., None]
    return count, sums, mean, linalg.gram_of_rows(centered), jnp.sum(centered * centered, axis=(-2, -1))


def _leave_out(moments, g):
    """Count, mean, unbiased covariance [D, D] and its trace of all rows outside group g."""
    count, sums, full_mean, grams, squares = moments
    n = jnp.sum(count) - count[g]
    mean = (jnp.sum(sums, axis=0) - sums[g]) / n
    shift = mean - full_mean  # moments about the full mean, moved to the replicate's own mean
    denominator = jnp.maximum(n - 1.0, 1.0)
    cov = (jnp.sum(grams, axis=0) - grams[g] - n * jnp.outer(shift, shift)) / denominator
    trace = (jnp.sum(squares) - squares[g] - n * jnp.dot(shift, shift)) / denominator
    return mean, cov, trace


def _layer_replicates(layer, num_groups, method, normalize):
    """FD without each group g, for one layer: [G]. `layer` holds that layer's rows (after the
    full set's rules), masks, text-row norms before replacement, and the group layouts."""
    (vision, text, vision_mask, text_mask, text_norms,
     vision_groups, text_groups, vision_index, vision_slots, text_index, text_slots) = layer
    # The text-centric scale of replicate g relative to the full set's (rows are already scaled).
    if not normalize:
        text_norms = jnp.ones_like(text_norms)
    in_text_group = (text_groups[None, :] == jnp.arange(num_groups)[:, None]) & text_mask
    group_norms = jnp.sum(jnp.where(in_text_group, text_norms, 0.0), axis=-1)
    group_counts = jnp.sum(in_text_group, axis=-1).astype(text_norms.dtype)
    rescale = (jnp.sum(group_counts) - group_counts) / (jnp.sum(group_norms) - group_norms)

    if method == "gram":  # works on rows: mask the group out and run the plain distance.
        def replicate(g):
            fd, _ = _frechet_from_rows(vision, vision_mask & (vision_groups != g),
                                       text, text_mask & (text_groups != g), method)
            return fd
    else:
        vision_moments = _group_moments(vision, vision_mask, vision_index, vision_slots)
        text_moments = _group_moments(text, text_mask, text_index, text_slots)

        def replicate(g):
            mean_v, cov_v, trace_v = _leave_out(vision_moments, g)
            mean_t, cov_t, trace_t = _leave_out(text_moments, g)
            cross, _ = cross_term_from_covariances(cov_v, cov_t, method)
            return jnp.sum((mean_v - mean_t) ** 2) + trace_v + trace_t - 2.0 * cross

    # One replicate at a time: G D×D problems side by side would hold G times the memory.
    return lax.map(replicate, jnp.arange(num_groups)) * rescale**2


@functools.partial(jax.jit, static_argnames=("method", "normalize", "remove_outliers", "num_groups"))
def _jackknife_jit(vision, text, vision_mask, text_mask, groups_and_layouts, quantile, *,
                   method, normalize, remove_outliers, num_groups):
    vision, text, text_norms, (vision_norm, text_norm) = preprocess(
        vision, text, vision_mask, text_mask, normalize, remove_outliers)
    per_layer, diagnostics = _frechet_from_rows(vision, vision_mask, text, text_mask, method)
    overall = jnp.log10(jnp.sum(per_layer))
    shared = tuple(groups_and_layouts)
    per_layer_replicates = lax.map(  # [L, G]: one layer's statistics in memory at a time
        lambda layer: _layer_replicates(layer + shared, num_groups, method, normalize),
        (vision, text, vision_mask, text_mask, text_norms)).T
    overall_replicates = jnp.log10(jnp.sum(per_layer_replicates, axis=-1))
    per_layer_se, per_layer_interval = jackknife_interval(per_layer, per_layer_replicates, quantile)
    overall_se, overall_interval = jackknife_interval(overall, overall_replicates, quantile)
    result = MIRResult(per_layer, overall, per_layer_se, per_layer_interval, overall_se,
                       overall_interval, per_layer_replicates, overall_replicates,
                       vision_norm_per_layer=vision_norm, text_norm_per_layer=text_norm)
    return result, diagnostics


def jackknife_mir(vision, text, vision_mask, text_mask, vision_groups, text_groups, *, method: str,
                  normalize: bool, remove_outliers: bool, estimator: str = "jackknife",
                  level: float = 0.95):
    """`compute_mir(..., uncertainty=estimator)` on validated float32 rows.

    vision [L, N, D], text [L, M, D]; masks [L, N] / [L, M] bool; groups [N] / [M] int (see
    compute_mir); method already resolved. Returns (MIRResult with every field, diagnostics).
    """
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown uncertainty estimator {estimator!r}; expected one of {ESTIMATORS}")
    groups_and_layouts, num_groups = _checked_layouts(vision_mask, text_mask, vision_groups, text_groups)
    return _jackknife_jit(vision, text, vision_mask, text_mask, groups_and_layouts,
                          jnp.float32(t_quantile(level, num_groups)), method=method,
                          normalize=normalize, remove_outliers=remove_outliers, num_groups=num_groups)


# --------------------------------------------------------------------------------------
# Two models on the same samples.
# --------------------------------------------------------------------------------------


class MIRDifference(NamedTuple):
    """MIR of model a minus model b on the same sample groups, with paired jackknife intervals.

    per_layer [L], per_layer_se [L], per_layer_interval [L, 2]; overall [], overall_se [],
    overall_interval [2]; excludes_zero: whether the overall interval lies entirely on one side
    of zero (the difference is larger than the choice of samples explains, at `level`).
    """

    per_layer: np.ndarray
    per_layer_se: np.ndarray
    per_layer_interval: np.ndarray
    overall: float
    overall_se: float
    overall_interval: np.ndarray
    excludes_zero: bool
    level: float


def paired_difference(a: MIRResult, b: MIRResult, level: float = 0.95) -> MIRDifference:
    """The jackknife interval of a − b for two results computed on the same samples with the same
    vision_groups/text_groups (so replicate g leaves out the same samples in both): the
    replicate differences carry the sampling noise the two models share, which cancels."""
    if a.overall_replicates is None or b.overall_replicates is None:
        raise ValueError("paired_difference needs results of compute_mir(..., uncertainty='jackknife')")
    rep_a = np.asarray(a.per_layer_replicates, np.float64)
    rep_b = np.asarray(b.per_layer_replicates, np.float64)
    if rep_a.shape != rep_b.shape:
        raise ValueError(f"replicates of shape [G, L] {rep_a.shape} and {rep_b.shape} differ: "
                         "the two results must share their layers and sample groups")
    quantile = t_quantile(level, rep_a.shape[0])
    per_layer = np.asarray(a.per_layer, np.float64) - np.asarray(b.per_layer, np.float64)
    per_layer_se, per_layer_interval = jackknife_interval(per_layer, rep_a - rep_b, quantile, np)
    overall = float(a.overall) - float(b.overall)
    overall_reps = np.asarray(a.overall_replicates, np.float64) - np.asarray(b.overall_replicates, np.float64)
    overall_se, overall_interval = jackknife_interval(overall, overall_reps, quantile, np)
    return MIRDifference(np.asarray(per_layer), np.asarray(per_layer_se), np.asarray(per_layer_interval),
                         overall, float(overall_se), overall_interval,
                         bool(overall_interval[0] > 0 or overall_interval[1] < 0), level)
