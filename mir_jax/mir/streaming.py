"""Streaming MIR in constant memory: `MIRAccumulator`.

Keeps per layer and modality only counts, means, D×D second moments and histograms
(D² + D·(median_bins + 2) + 65,538 floats). With the 3-sigma rule the data is read twice
(three times when a median falls outside its first-batch histogram range), and the
text-centric scale is applied to the final statistics. Under a mesh, `update` is a `shard_map`
over rows with a psum. Passes and precision: docs/mir.md, section 5.

    acc = MIRAccumulator(method="auto")
    while acc.needs_another_pass:
        for vision, text, vision_mask, text_mask in batches():
            acc.update(vision, text, vision_mask, text_mask)
        acc.end_pass()
    result = acc.result()  # or simply MIRAccumulator(...).run(batches)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mir_jax.mir import linalg
from mir_jax.mir.methods import published_fast_diagnostics, resolve_method
from mir_jax.mir.rules import MIRResult, as_row_mask, cross_term_from_covariances, outlier_rows

NORM_BINS = 65536
DEFAULT_MEDIAN_BINS = 256


# --------------------------------------------------------------------------------------
# Pure per-batch statistics (local rows; `axes` names mesh axes to psum over).
# --------------------------------------------------------------------------------------


def _psum(x, axes):
    return jax.lax.psum(x, axes) if axes else x


def _pmin(x, axes):
    return jax.lax.pmin(x, axes) if axes else x


def _pmax(x, axes):
    return jax.lax.pmax(x, axes) if axes else x


def _row_moments(x, mask, axes):
    """Count [L], mean [L, ...] and centered M2 of rows x [L, n, ...] (global over axes)."""
    w = mask.astype(x.dtype)
    wx = w.reshape(w.shape + (1,) * (x.ndim - 2))
    count = _psum(jnp.sum(w, axis=1), axes)
    # Row sums as a contraction with the weights (see linalg.masked_mean_and_centered).
    total = jnp.einsum("ln,ln...->l...", w, x, precision=linalg.HIGHEST)
    mean = _psum(total, axes) / jnp.maximum(count, 1.0).reshape(count.shape + (1,) * (x.ndim - 2))
    centered = (x - mean[:, None]) * wx
    if x.ndim == 3:
        m2 = linalg.gram_of_rows(centered)
    else:
        m2 = jnp.sum(centered * centered, axis=1)
    return count, mean, _psum(m2, axes)


def _merge_moments(a, b):
    """Chan et al.'s parallel combination of (count, mean, M2) triples."""
    n_a, mean_a, m2_a = a
    n_b, mean_b, m2_b = b
    n = n_a + n_b
    safe_n = jnp.maximum(n, 1.0)
    delta = mean_b - mean_a
    extra = (n_a * n_b / safe_n)
    if m2_a.ndim == 3:
        outer = jnp.einsum("ld,le->lde", delta, delta)
        m2 = m2_a + m2_b + outer * extra[:, None, None]
        mean = mean_a + delta * (n_b / safe_n)[:, None]
    else:
        m2 = m2_a + m2_b + delta * delta * extra
        mean = mean_a + delta * n_b / safe_n
    return n, mean, m2


def _histogram(values, mask, lo, hi, bins, axes):
    """Counts of values [L, n, C] in `bins` equal bins of [lo, hi] per (layer, column).

    lo/hi: [L, C]. Returns (hist [L, C, bins], under [L, C], over [L, C]).
    """
    width = (hi - lo) / bins
    pos = (values - lo[:, None]) / jnp.where(width > 0, width, 1.0)[:, None]
    under = (pos < 0) & mask[..., None]
    over = (pos >= bins) & mask[..., None]
    inside = mask[..., None] & ~under & ~over
    index = jnp.clip(pos, 0, bins - 1).astype(jnp.int32)
    layers, _, cols = values.shape
    flat = (jnp.arange(layers)[:, None, None] * cols + jnp.arange(cols)[None, None, :]) * bins + index
    hist = jnp.zeros((layers * cols * bins,), jnp.float32)
    hist = hist.at[flat.reshape(-1)].add(inside.reshape(-1).astype(jnp.float32))
    hist = hist.reshape(layers, cols, bins)
    return (_psum(hist, axes), _psum(jnp.sum(under, axis=1).astype(jnp.float32), axes),
            _psum(jnp.sum(over, axis=1).astype(jnp.float32), axes))


def _masked_extremes(x, mask, axes):
    """Per-layer, per-column min and max of valid rows x [L, n, C]; +/-big where none."""
    big = jnp.finfo(x.dtype).max
    return (_pmin(jnp.min(jnp.where(mask[..., None], x, big), axis=1), axes),
            _pmax(jnp.max(jnp.where(mask[..., None], x, -big), axis=1), axes))


def _masked_range(x, mask, axes):
    """`_masked_extremes`, with [0, 1] where a (layer, column) has no valid row."""
    lo, hi = _masked_extremes(x, mask, axes)
    empty = lo > hi
    return jnp.where(empty, 0.0, lo), jnp.where(empty, 1.0, hi)


def _init_ranges(x, mask, axes):
    """Histogram ranges from the first batch: norms in [0, 4·max], column j in mean_j ± 4·std_j."""
    norms = jnp.linalg.norm(x, axis=-1)[..., None]
    _, norm_hi = _masked_range(norms, mask, axes)
    # Per-column moments: the rows [L, n, D] viewed as L·D independent 1-D columns.
    columns = jnp.swapaxes(x, 1, 2).reshape(-1, x.shape[1])
    column_mask = jnp.repeat(mask, x.shape[2], axis=0)
    count, mean, m2 = _row_moments(columns, column_mask, axes)
    std = jnp.sqrt(m2 / jnp.maximum(count - 1.0, 1.0)).reshape(x.shape[0], x.shape[2])
    mean = mean.reshape(x.shape[0], x.shape[2])
    half_width = 4.0 * jnp.maximum(std, 1e-6 * jnp.maximum(jnp.abs(mean), 1.0))
    return {
        "norm_lo": jnp.zeros_like(norm_hi),
        "norm_hi": 4.0 * jnp.maximum(norm_hi, 1e-30),
        "col_lo": mean - half_width,
        "col_hi": mean + half_width,
    }


def _outlier_pass_update(x, mask, state, axes, median_bins):
    """Adds one batch of rows x [L, n, D] to the pass-1 statistics."""
    norms = jnp.linalg.norm(x, axis=-1)
    moments = _merge_moments(state["norm_moments"], _row_moments(norms, mask, axes))
    nh, nu, no = _histogram(norms[..., None], mask, state["norm_lo"], state["norm_hi"], NORM_BINS, axes)
    ch, cu, co = _histogram(x, mask, state["col_lo"], state["col_hi"], median_bins, axes)
    norm_min, norm_max = _masked_extremes(norms[..., None], mask, axes)
    col_min, col_max = _masked_extremes(x, mask, axes)
    return dict(
        state,
        norm_moments=moments,
        norm_min=jnp.minimum(state["norm_min"], norm_min),
        norm_max=jnp.maximum(state["norm_max"], norm_max),
        col_min=jnp.minimum(state["col_min"], col_min),
        col_max=jnp.maximum(state["col_max"], col_max),
        norm_hist=state["norm_hist"] + nh[:, 0],
        norm_under=state["norm_under"] + nu[:, 0],
        norm_over=state["norm_over"] + no[:, 0],
        col_hist=state["col_hist"] + ch,
        col_under=state["col_under"] + cu,
        col_over=state["col_over"] + co,
    )


def _histogram_lower_median(hist, under, over, lo, hi, count):
    """Lower median (rank (n-1)//2) from hist [..., bins], by interpolation in its bin."""
    bins = hist.shape[-1]
    rank = jnp.floor(jnp.maximum(count - 1.0, 0.0) / 2.0)[..., None]  # [..., 1]
    cum = under[..., None] + jnp.cumsum(hist, axis=-1)  # rows <= end of each bin
    index = jnp.sum((cum <= rank).astype(jnp.int32), axis=-1, keepdims=True)
    index = jnp.clip(index, 0, bins - 1)
    before = jnp.take_along_axis(cum - hist, index, axis=-1)
    in_bin = jnp.take_along_axis(hist, index, axis=-1)
    frac = (rank - before + 0.5) / jnp.maximum(in_bin, 1.0)
    width = ((hi - lo) / bins)[..., None]
    value = lo[..., None] + (index + jnp.clip(frac, 0.0, 1.0)) * width
    # A median outside the range falls back to the edge; `_zoomed_ranges` prevents this.
    value = jnp.where(rank < under[..., None], lo[..., None], value)
    value = jnp.where(rank >= (count[..., None] - over[..., None]), hi[..., None], value)
    return value[..., 0]


def _zoomed_ranges(state):
    """(ranges, needed): the histogram ranges for another statistics pass, narrowed to the
    exact [min, lo) or [hi, max] wherever a lower median fell outside its range (in the
    under- or overflow), else unchanged; `needed` whether any did."""
    count = state["norm_moments"][0]
    rank = jnp.floor(jnp.maximum(count - 1.0, 0.0) / 2.0)

    def zoom(lo, hi, under, over, low_end, high_end, n, r):
        below = (n > 0) & (r < under)
        above = (n > 0) & (r >= n - over)
        new_lo = jnp.where(below, low_end, jnp.where(above, hi, lo))
        new_hi = jnp.where(below, lo, jnp.where(above, high_end, hi))
        return new_lo, new_hi, jnp.any(below | above)

    norm_lo, norm_hi, norm_needed = zoom(
        state["norm_lo"][:, 0], state["norm_hi"][:, 0], state["norm_under"], state["norm_over"],
        state["norm_min"][:, 0], state["norm_max"][:, 0], count, rank)
    col_lo, col_hi, col_needed = zoom(
        state["col_lo"], state["col_hi"], state["col_under"], state["col_over"],
        state["col_min"], state["col_max"], count[:, None], rank[:, None])
    ranges = {"norm_lo": norm_lo[:, None], "norm_hi": norm_hi[:, None], "col_lo": col_lo, "col_hi": col_hi}
    return ranges, norm_needed | col_needed


def _empty_outlier_state(ranges, layers, dim, bins):
    """Pass-1 statistics before any batch, over the given histogram ranges."""
    big = jnp.finfo(jnp.float32).max
    return dict(
        ranges,
        norm_moments=_zero_moments(layers),
        norm_hist=jnp.zeros((layers, NORM_BINS)),
        norm_under=jnp.zeros((layers,)),
        norm_over=jnp.zeros((layers,)),
        norm_min=jnp.full((layers, 1), big),
        norm_max=jnp.full((layers, 1), -big),
        col_hist=jnp.zeros((layers, dim, bins)),
        col_under=jnp.zeros((layers, dim)),
        col_over=jnp.zeros((layers, dim)),
        col_min=jnp.full((layers, dim), big),
        col_max=jnp.full((layers, dim), -big),
    )


def _outlier_rule(state):
    """(median norm [L], σ [L], median row [L, D]) from finished pass-1 statistics."""
    count, _, m2 = state["norm_moments"]
    std = jnp.sqrt(m2 / jnp.maximum(count - 1.0, 1.0))
    median_norm = _histogram_lower_median(
        state["norm_hist"], state["norm_under"], state["norm_over"],
        state["norm_lo"][:, 0], state["norm_hi"][:, 0], count)
    median_row = _histogram_lower_median(
        state["col_hist"], state["col_under"], state["col_over"],
        state["col_lo"], state["col_hi"], count[:, None])
    return median_norm, std, median_row


def _moment_pass_update(x, mask, state, axes, rule=None):
    """Adds one batch of rows x [L, n, D] to state = (moments, norm_sum [L]): the count, mean and
    M2 of the rows with outliers replaced by `rule`, and the sum of the valid rows' norms as
    given (before replacement; the text-centric scale and the reported mean norms)."""
    moments, norm_sum = state
    norms = jnp.linalg.norm(x, axis=-1)  # once per row: the rule and the norm sum share it
    if rule is not None:
        median_norm, std, median_row = rule
        outlier = outlier_rows(norms, mask, median_norm, std)
        x = jnp.where(outlier[..., None], median_row[:, None, :], x)
    norm_sum = norm_sum + _psum(jnp.sum(norms * mask, axis=1), axes)
    return _merge_moments(moments, _row_moments(x, mask, axes)), norm_sum


def _moment_pass_update_replaced(x, mask, state, rule, axes):
    return _moment_pass_update(x, mask, state, axes, rule)


def _zero_moments(layers, dim=None):
    shape = (layers,) if dim is None else (layers, dim)
    m2_shape = (layers,) if dim is None else (layers, dim, dim)
    return (jnp.zeros((layers,), jnp.float32), jnp.zeros(shape, jnp.float32),
            jnp.zeros(m2_shape, jnp.float32))


_outlier_rule_jit = jax.jit(_outlier_rule)
_zoomed_ranges_jit = jax.jit(_zoomed_ranges)


@functools.cache
def _compiled(fn, n_sharded, n_replicated, mesh, static):
    """jit(fn), in a shard_map over the rows (first n_sharded arguments) when a mesh is given;
    cached per (fn, mesh) at module level so every accumulator reuses it.
    """
    axes = tuple(mesh.axis_names) if mesh is not None else ()
    body = functools.partial(fn, axes=axes, **dict(static))
    if mesh is not None:
        row = PartitionSpec(None, axes)
        body = jax.shard_map(body, mesh=mesh,
                             in_specs=(row,) * n_sharded + (PartitionSpec(),) * n_replicated,
                             out_specs=PartitionSpec(), check_vma=False)
    return jax.jit(body)


# --------------------------------------------------------------------------------------
# The accumulator.
# --------------------------------------------------------------------------------------


class MIRAccumulator:
    """Streaming MIR with memory independent of the number of samples.

    Args:
      method: as in `compute_mir`, but only covariances are kept: "gram" runs as "eigh", and
        "auto" is newton_schulz on TPU, else eigh.
      normalize, remove_outliers: as in `compute_mir`.
      mesh: optional `jax.sharding.Mesh`; batch rows are sharded over all its axes.
      median_bins: histogram bins per column for the median row (memory D·bins).
      uncertainty: must be None: intervals are refused (docs/mir.md, section 9).
    """

    def __init__(self, *, method: str = "auto", normalize: bool = True,
                 remove_outliers: bool = True, mesh: Mesh | None = None,
                 median_bins: int = DEFAULT_MEDIAN_BINS, uncertainty: str | None = None):
        if uncertainty is not None:
            raise ValueError(
                "MIRAccumulator does not compute intervals: per-group D×D moments would take G times "
                "its memory; use compute_mir(..., uncertainty='jackknife') on rows (docs/mir.md, section 9)")
        self.method = resolve_method(method)
        self.normalize = normalize
        self.remove_outliers = remove_outliers
        self.mesh = mesh
        self.median_bins = median_bins
        self.current_pass = 0
        self._zoomed = False  # whether pass 1b was needed
        self._outlier_state = None  # {"vision": ..., "text": ...} during pass 1
        self._rules = None
        self._moments = None  # {"vision": (moments, norm_sum), "text": ...} from the moment pass
        self._shape = None
        self.diagnostics: dict = {}  # the method's diagnostics, set by result()

    @property
    def num_passes(self) -> int:
        """Passes over the data: 1 without the outlier rule, 2 with it, 3 when pass 1b runs."""
        return (3 if self._zoomed else 2) if self.remove_outliers else 1

    @property
    def _gathering_outlier_statistics(self) -> bool:
        """In pass 1 (or 1b): the outlier rule is wanted and not yet known."""
        return self.remove_outliers and self._rules is None

    # ----- plumbing -------------------------------------------------------------------

    def _axes(self):
        return tuple(self.mesh.axis_names) if self.mesh is not None else ()

    def _compile(self, fn, n_sharded, n_replicated, **static):
        """The compiled form of module-level `fn` for this accumulator's mesh (cached)."""
        return _compiled(fn, n_sharded, n_replicated, self.mesh, tuple(sorted(static.items())))

    def _prepare(self, rows, mask, name):
        rows = jnp.asarray(rows, jnp.float32)
        if rows.ndim != 3:
            raise ValueError(f"{name} must have shape [L, N, D]; got {tuple(rows.shape)}")
        mask = as_row_mask(mask, rows.shape[:2], f"{name}_mask")
        if self.mesh is not None:  # Pad rows to a multiple of the device count.
            devices = self.mesh.devices.size
            pad = (-rows.shape[1]) % devices
            if pad:
                rows = jnp.pad(rows, ((0, 0), (0, pad), (0, 0)))
                mask = jnp.pad(mask, ((0, 0), (0, pad)))
            row = NamedSharding(self.mesh, PartitionSpec(None, self._axes()))
            rows, mask = jax.device_put(rows, row), jax.device_put(mask, row)
        return rows, mask

    # ----- public API -----------------------------------------------------------------

    def update(self, vision, text, vision_mask=None, text_mask=None) -> None:
        """Adds one batch. vision [L, N, D], text [L, M, D]; masks [N]/[L, N], [M]/[L, M]."""
        if self.current_pass >= self.num_passes:
            raise RuntimeError("all passes are finished; call result()")
        vision, vision_mask = self._prepare(vision, vision_mask, "vision")
        text, text_mask = self._prepare(text, text_mask, "text")
        shape = (vision.shape[0], vision.shape[2])
        if text.shape[0] != shape[0] or text.shape[2] != shape[1]:
            raise ValueError(f"vision {vision.shape} and text {text.shape} must agree on L and D")
        if self._shape is None:
            self._shape = shape
        elif self._shape != shape:
            raise ValueError(f"batch has (L, D) = {shape}; earlier batches had {self._shape}")
        layers, dim = shape
        if self._gathering_outlier_statistics:
            self._update_outlier_pass(vision, vision_mask, text, text_mask, layers)
        else:
            self._update_moment_pass(vision, vision_mask, text, text_mask, layers, dim)

    def _update_outlier_pass(self, vision, vision_mask, text, text_mask, layers):
        bins = self.median_bins
        if self._outlier_state is None:
            init = self._compile(_init_ranges, 2, 0)
            self._outlier_state = {key: _empty_outlier_state(init(x, m), layers, x.shape[2], bins)
                                   for key, x, m in (("vision", vision, vision_mask), ("text", text, text_mask))}
        step = self._compile(_outlier_pass_update, 2, 1, median_bins=bins)
        for key, x, m in (("vision", vision, vision_mask), ("text", text, text_mask)):
            self._outlier_state[key] = step(x, m, self._outlier_state[key])

    def _update_moment_pass(self, vision, vision_mask, text, text_mask, layers, dim):
        if self._moments is None:
            self._moments = {k: (_zero_moments(layers, dim), jnp.zeros((layers,), jnp.float32))
                             for k in ("vision", "text")}
        if self._rules is None:
            step = self._compile(_moment_pass_update, 2, 1)
            args = {"vision": (), "text": ()}
        else:
            step = self._compile(_moment_pass_update_replaced, 2, 2)
            args = {k: (self._rules[k],) for k in ("vision", "text")}
        for key, x, m in (("vision", vision, vision_mask), ("text", text, text_mask)):
            self._moments[key] = step(x, m, self._moments[key], *args[key])

    def end_pass(self) -> None:
        """Ends the current pass over the data."""
        if self.current_pass >= self.num_passes:
            raise RuntimeError("all passes are already finished")
        if self._gathering_outlier_statistics:
            if self._outlier_state is None:
                raise RuntimeError("pass 1 saw no batches")
            zoomed = {k: _zoomed_ranges_jit(s) for k, s in self._outlier_state.items()}
            if not self._zoomed and any(bool(needed) for _, needed in zoomed.values()):
                # Pass 1b: the same statistics again, over ranges that hold every median.
                self._zoomed = True
                layers, dim = self._shape
                self._outlier_state = {k: _empty_outlier_state(ranges, layers, dim, self.median_bins)
                                       for k, (ranges, _) in zoomed.items()}
            else:
                self._rules = {k: _outlier_rule_jit(s) for k, s in self._outlier_state.items()}
                self._outlier_state = None  # Free the histograms.
        elif self._moments is None:
            raise RuntimeError("the moment pass saw no batches")
        self.current_pass += 1

    @property
    def needs_another_pass(self) -> bool:
        return self.current_pass < self.num_passes

    def result(self) -> MIRResult:
        """MIRResult(per_layer=[L], overall, vision_norm_per_layer=[L], text_norm_per_layer=[L])
        once every pass has ended; the norms are the mean norms of all valid rows as given."""
        if self.needs_another_pass:
            raise RuntimeError(
                f"MIRAccumulator needs {self.num_passes} pass(es) over the data; "
                f"{self.current_pass} finished (call end_pass() after each)")
        result, diagnostics = _finalize(self._moments["vision"], self._moments["text"],
                                        method=self.method, normalize=self.normalize)
        self.diagnostics = diagnostics
        return result

    def run(self, batches: Callable[[], Iterable]) -> MIRResult:
        """Runs every pass: `batches()` returns a fresh iterable of
        (vision, text, vision_mask, text_mask) tuples each time it is called."""
        while self.needs_another_pass:
            for batch in batches():
                self.update(*batch)
            self.end_pass()
        return self.result()


@functools.partial(jax.jit, static_argnames=("method", "normalize"))
def _finalize(vision, text, *, method, normalize):
    """(MIRResult, diagnostics) from the finished (moments, norm_sum) of each modality, the
    text-centric scale applied to the moments."""
    (n_v, mean_v, m2_v), norm_sum_v = vision
    (n_t, mean_t, m2_t), norm_sum_t = text
    vision_norm = norm_sum_v / jnp.maximum(n_v, 1.0)  # [L]: mean norm of the rows as given
    text_norm = norm_sum_t / jnp.maximum(n_t, 1.0)
    cov_v = m2_v / jnp.maximum(n_v - 1.0, 1.0)[:, None, None]
    cov_t = m2_t / jnp.maximum(n_t - 1.0, 1.0)[:, None, None]
    if normalize:
        scale = 1.0 / text_norm  # [L]
        mean_v, mean_t = mean_v * scale[:, None], mean_t * scale[:, None]
        cov_v, cov_t = cov_v * (scale * scale)[:, None, None], cov_t * (scale * scale)[:, None, None]
    trace_v = jnp.trace(cov_v, axis1=-2, axis2=-1)
    trace_t = jnp.trace(cov_t, axis1=-2, axis2=-1)
    mean_term = jnp.sum((mean_v - mean_t) ** 2, axis=-1)
    cross, diagnostics = cross_term_from_covariances(cov_v, cov_t, method)
    per_layer = mean_term + trace_v + trace_t - 2.0 * cross
    diagnostics = published_fast_diagnostics(per_layer, cross, diagnostics)
    return MIRResult(per_layer=per_layer, overall=jnp.log10(jnp.sum(per_layer)),
                     vision_norm_per_layer=vision_norm, text_norm_per_layer=text_norm), diagnostics
