"""Matrix routines behind the MIR kernel, batched over leading dimensions (one per layer):
masked statistics, exact lower medians, and tr((Σ_a Σ_b)^{1/2}) by three routes (factored,
Gram, Newton–Schulz). Route precision: docs/mir.md, section 5; timings behind the shapes of
these routines: BENCHMARKS.md, "Kernel notes".
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import lax

from mir_jax.models import backend

HIGHEST = lax.Precision.HIGHEST


def _eps(dtype) -> float:
    return float(jnp.finfo(dtype).eps)


# --------------------------------------------------------------------------------------
# Masked statistics.
# --------------------------------------------------------------------------------------


def masked_mean_and_centered(x: jax.Array, mask: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mean of the valid rows of x [..., N, D] (mask [..., N] bool) and the centered rows.

    Returns count [...] (float), mean [..., D], centered [..., N, D] (padding rows zero).
    """
    weights = mask.astype(x.dtype)
    count = jnp.sum(weights, axis=-1)
    # The masked row sum as a matrix-vector product: XLA:CPU reduces the middle axis of an
    # [L, N, D] array poorly, and a GEMV does not (timings: BENCHMARKS.md, kernel notes).
    total = jnp.einsum("...n,...nd->...d", weights, x, precision=HIGHEST)
    mean = total / jnp.maximum(count, 1.0)[..., None]
    centered = (x - mean[..., None, :]) * weights[..., None]
    return count, mean, centered


_GRAM_BLOCKS = 4  # column blocks per side of a symmetric Gram product (D >= _GRAM_BLOCKED_FROM)
_GRAM_BLOCKED_FROM = 1024


def gram_of_rows(x: jax.Array) -> jax.Array:
    """xᵀx over the rows: [..., N, D] -> [..., D, D], exactly symmetric.

    For large D only the blocks on and below the diagonal are multiplied and the rest
    transposed, since XLA has no symmetric rank-k update.
    """
    dim = x.shape[-1]
    if dim < _GRAM_BLOCKED_FROM or dim % _GRAM_BLOCKS:
        return jnp.einsum("...nd,...ne->...de", x, x, precision=HIGHEST)
    width = dim // _GRAM_BLOCKS
    cols = [x[..., i * width:(i + 1) * width] for i in range(_GRAM_BLOCKS)]
    lower = {(i, j): jnp.einsum("...nd,...ne->...de", cols[i], cols[j], precision=HIGHEST)
             for i in range(_GRAM_BLOCKS) for j in range(i + 1)}
    rows = [jnp.concatenate([lower[i, j] if j <= i else jnp.swapaxes(lower[j, i], -1, -2)
                             for j in range(_GRAM_BLOCKS)], axis=-1)
            for i in range(_GRAM_BLOCKS)]
    return jnp.concatenate(rows, axis=-2)


def covariance_from_centered(centered: jax.Array, count: jax.Array) -> jax.Array:
    """Unbiased covariance [..., D, D] from centered rows [..., N, D] (divide by N-1)."""
    return gram_of_rows(centered) / jnp.maximum(count - 1.0, 1.0)[..., None, None]


def symmetrize(a: jax.Array) -> jax.Array:
    return 0.5 * (a + jnp.swapaxes(a, -1, -2))


# --------------------------------------------------------------------------------------
# Exact order statistics without sorting.
# --------------------------------------------------------------------------------------


def _float_to_ordered_uint(x: jax.Array) -> jax.Array:
    """Bijection float32 -> uint32 that preserves order (negative floats flip all bits)."""
    u = lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
    return jnp.where((u >> 31) == 1, ~u, u | jnp.uint32(0x80000000))


def _ordered_uint_to_float(k: jax.Array) -> jax.Array:
    u = jnp.where((k >> 31) == 1, k & jnp.uint32(0x7FFFFFFF), ~k)
    return lax.bitcast_convert_type(u, jnp.float32)


_COUNT_BLOCK = 16  # rows per uint8 partial count (a block count is at most 16)


def _count_true_along_rows(pred: jax.Array) -> jax.Array:
    """Number of True entries over axis -2: [..., N, D] bool -> [..., D] int32.

    Sums blocks of 16 rows in uint8 first, then the block counts in int32, which XLA:CPU
    vectorises far better than a bool->int32 column sum.
    """
    n, d = pred.shape[-2:]
    blocks = -(-n // _COUNT_BLOCK)
    pad = [(0, 0)] * (pred.ndim - 2) + [(0, blocks * _COUNT_BLOCK - n), (0, 0)]
    pred = jnp.pad(pred.astype(jnp.uint8), pad)
    pred = pred.reshape(pred.shape[:-2] + (blocks, _COUNT_BLOCK, d))
    partial = jnp.sum(pred, axis=-2, dtype=jnp.uint8)
    return jnp.sum(partial.astype(jnp.int32), axis=-2)


def _select_uint16(keys: jax.Array, rank: jax.Array) -> jax.Array:
    """The rank-th smallest (0-based) uint16 key per column, by 16 bisection passes.

    keys [..., N, D] uint16 (0xFFFF is never counted: how callers exclude rows); rank [..., D]
    or [..., 1] int32. Returns [..., D] uint16.
    """
    lo = jnp.zeros(keys.shape[:-2] + keys.shape[-1:], jnp.uint32)
    hi = jnp.full_like(lo, 0xFFFF)
    need = rank + 1

    def step(_, bounds):
        lo, hi = bounds
        mid = lo + (hi - lo) // 2
        n_le = _count_true_along_rows(keys <= mid.astype(jnp.uint16)[..., None, :])
        enough = n_le >= need
        return jnp.where(enough, lo, mid + 1), jnp.where(enough, mid, hi)

    lo, _ = lax.fori_loop(0, 16, step, (lo, hi))
    return lo.astype(jnp.uint16)


def masked_lower_median(x: jax.Array, mask: jax.Array) -> jax.Array:
    """Lower median over axis -2 of the valid rows, exactly as torch.median (rank (n-1)//2).

    A radix bisection over the order-preserving uint32 keys of the float32 values, in two
    16-bit halves, instead of a sort. x: [..., N, D]; mask: [..., N] bool. Returns [..., D]
    float32, undefined when no row is valid.
    """
    keys = _float_to_ordered_uint(x)
    valid = mask[..., None]
    count = jnp.sum(mask.astype(jnp.int32), axis=-1)
    rank = (jnp.maximum(count - 1, 0) // 2)[..., None]  # [..., 1]
    high = jnp.where(valid, keys >> 16, 0xFFFF).astype(jnp.uint16)
    high_answer = _select_uint16(high, rank)
    below = _count_true_along_rows(high < high_answer[..., None, :])
    same = high == high_answer[..., None, :]
    low = jnp.where(same & valid, keys & 0xFFFF, 0xFFFF).astype(jnp.uint16)
    low_answer = _select_uint16(low, rank - below)
    answer = (high_answer.astype(jnp.uint32) << 16) | low_answer.astype(jnp.uint32)
    return _ordered_uint_to_float(answer)


# --------------------------------------------------------------------------------------
# Factors and singular values.
# --------------------------------------------------------------------------------------


def per_matrix(fn, *arrays):
    """fn applied to one matrix at a time (lax.map) on CPU; batched on other backends.

    On CPU two batched LAPACK calls running at once can deadlock a small intra-op pool.
    arrays: [..., m, n] with the same leading batch shape; fn maps one [m, n] set.
    """
    batch = arrays[0].shape[:-2]
    if not batch or not backend.on_cpu():
        return fn(*arrays)
    flat = tuple(a.reshape((-1,) + a.shape[len(batch):]) for a in arrays)
    out = lax.map(lambda xs: fn(*xs), flat)
    return jax.tree.map(lambda o: o.reshape(batch + o.shape[1:]), out)


def _sum_singular_values(c: jax.Array) -> jax.Array:
    """Σ_i σ_i(c) over the last two axes (the nuclear norm); differentiable."""
    singular_values = per_matrix(lambda m: jnp.linalg.svd(m, compute_uv=False), c)
    return jnp.sum(singular_values, axis=-1)


def _equilibration(cov: jax.Array) -> jax.Array:
    """d = diag(Σ)^{-1/2} (1 where the variance is 0), so d Σ d has unit diagonal."""
    diag = jnp.diagonal(cov, axis1=-2, axis2=-1)
    return lax.rsqrt(jnp.where(diag > 0, diag, 1.0))


_PIVOT_FLOOR = 100.0  # in units of eps: smallest squared Cholesky pivot taken as nonsingular


def _covariance_factor(cov: jax.Array) -> tuple[jax.Array, jax.Array]:
    """F with Σ = F Fᵀ for PSD covariances [..., D, D]: Cholesky of the equilibrated Σ, or, when
    any batch element breaks down or has a squared pivot below 100·eps (Σ singular, as when
    rows < D), an eigendecomposition of the whole batch with zero eigenvalues dropped.

    Returns (F [..., D, D], healthy: bool scalar, True when the Cholesky route was taken).
    """
    dim = cov.shape[-1]
    scale = _equilibration(cov)
    unit = cov * scale[..., :, None] * scale[..., None, :]  # jnp's Cholesky symmetrizes it
    rel_floor = dim * _eps(cov.dtype)
    chol = per_matrix(jnp.linalg.cholesky, unit)
    pivots = jnp.diagonal(chol, axis1=-2, axis2=-1)
    # Cholesky is backward stable whenever it completes, so only a singular Σ (a breakdown,
    # which jax returns as an all-NaN factor, or rounding-level pivots) takes eigh.
    healthy = jnp.all(pivots * pivots > _PIVOT_FLOOR * _eps(cov.dtype))

    def via_cholesky(unit, chol):
        return chol

    def via_eigh(unit, chol):
        w, v = per_matrix(jnp.linalg.eigh, symmetrize(unit))
        keep = w > rel_floor * jnp.max(w, axis=-1, keepdims=True)
        root = jnp.where(keep, jnp.sqrt(jnp.where(keep, w, 1.0)), 0.0)
        return v * root[..., None, :]

    factor = lax.cond(healthy, via_cholesky, via_eigh, unit, chol)
    return factor / scale[..., :, None], healthy


# --------------------------------------------------------------------------------------
# tr((Σ_a Σ_b)^{1/2}).
# --------------------------------------------------------------------------------------


def trace_sqrt_product_factored(cov_a: jax.Array, cov_b: jax.Array) -> jax.Array:
    """tr((Σ_a Σ_b)^{1/2}) for PSD [..., D, D] covariances (exact).

    The nuclear norm of F_aᵀ F_b for factors Σ = F Fᵀ: its singular values carry a float32
    error of eps·sqrt(λ_max) where eigenvalues of F_aᵀ Σ_b F_a would carry eps·λ_max
    (measured errors: BENCHMARKS.md, "MIR kernel").
    """
    factor_a, _ = _covariance_factor(cov_a)
    factor_b, _ = _covariance_factor(cov_b)
    cross = jnp.einsum("...ki,...kj->...ij", factor_a, factor_b, precision=HIGHEST)
    return _sum_singular_values(cross)


def trace_sqrt_product_gram(
    centered_a: jax.Array, count_a: jax.Array, centered_b: jax.Array, count_b: jax.Array
) -> jax.Array:
    """tr((Σ_a Σ_b)^{1/2}) from centered rows, exact, for few rows (n_a or n_b < D): the nuclear
    norm of A_c B_cᵀ / sqrt((n_a-1)(n_b-1)), with B_c replaced by a D×D factor of Σ_b when it
    has more than D rows.

    centered_a: [..., Na, D] (padding rows zero), count_a: [...]; centered_b, count_b likewise.
    Returns [...].
    """
    na, nb, dim = centered_a.shape[-2], centered_b.shape[-2], centered_a.shape[-1]
    if na > nb:  # Work on the side with fewer rows.
        centered_a, centered_b, count_a, count_b = centered_b, centered_a, count_b, count_a
        na, nb = nb, na
    denom_a = jnp.sqrt(jnp.maximum(count_a - 1.0, 1.0))[..., None, None]
    if nb > dim:
        factor_b, _ = _covariance_factor(covariance_from_centered(centered_b, count_b))
        cross = jnp.einsum("...id,...dj->...ij", centered_a, factor_b, precision=HIGHEST)
        return _sum_singular_values(cross / denom_a)
    denom_b = jnp.sqrt(jnp.maximum(count_b - 1.0, 1.0))[..., None, None]
    cross = jnp.einsum("...id,...jd->...ij", centered_a, centered_b, precision=HIGHEST)
    return _sum_singular_values(cross / (denom_a * denom_b))


def _newton_schulz_sqrt(a: jax.Array, num_iters: int) -> jax.Array:
    """Principal square root of symmetric PSD a [..., D, D] by coupled Newton–Schulz; each batch
    element stops once its residual ||I − Z Y||_F no longer decreases (on a singular matrix the
    iteration would then amplify rounding noise).
    """
    dim = a.shape[-1]
    norm = jnp.sqrt(jnp.sum(a * a, axis=(-2, -1)))
    norm = jnp.where(norm > 0, norm, 1.0)[..., None, None]
    eye = jnp.broadcast_to(jnp.eye(dim, dtype=a.dtype), a.shape)

    def step(_, carry):
        y, z, best, frozen = carry
        zy = jnp.matmul(z, y, precision=HIGHEST)
        residual = jnp.sqrt(jnp.sum((eye - zy) ** 2, axis=(-2, -1)))
        frozen = frozen | (residual > best)
        t = 0.5 * (3.0 * eye - zy)
        y_new = jnp.matmul(y, t, precision=HIGHEST)
        z_new = jnp.matmul(t, z, precision=HIGHEST)
        keep = frozen[..., None, None]
        return (jnp.where(keep, y, y_new), jnp.where(keep, z, z_new),
                jnp.minimum(best, residual), frozen)

    inf = jnp.full(a.shape[:-2], jnp.inf, a.dtype)
    init = (a / norm, eye, inf, jnp.zeros(a.shape[:-2], bool))
    y, _, _, _ = lax.fori_loop(0, num_iters, step, init)
    return y * jnp.sqrt(norm)


def _newton_schulz_nuclear_norm(c: jax.Array, num_iters: int) -> jax.Array:
    """Σσ_i(c) = tr(Uᵀ c), U the polar factor of c [..., m, n] by Newton–Schulz.

    A singular value that has not converged is underestimated, by at most itself.
    """
    norm = jnp.sqrt(jnp.sum(c * c, axis=(-2, -1)))
    x = c / jnp.where(norm > 0, norm, 1.0)[..., None, None]

    def step(_, x):
        xtx = jnp.matmul(jnp.swapaxes(x, -1, -2), x, precision=HIGHEST)
        return 1.5 * x - 0.5 * jnp.matmul(x, xtx, precision=HIGHEST)

    polar = lax.fori_loop(0, num_iters, step, x)
    return jnp.sum(polar * c, axis=(-2, -1))


def trace_sqrt_product_newton_schulz(
    cov_a: jax.Array, cov_b: jax.Array, num_iters: int = 30
) -> jax.Array:
    """tr((Σ_a Σ_b)^{1/2}) with matmuls only (for TPU-style hardware): Newton–Schulz square roots
    of the equilibrated covariances, then the polar iteration for the nuclear norm of their
    product. Tested tolerance (tests/test_mir.py): 1e-3 relative on the Fréchet distance for
    well-conditioned data. cov_a, cov_b: [..., D, D]. Returns [...].
    """
    scale_a = _equilibration(cov_a)
    a = cov_a * scale_a[..., :, None] * scale_a[..., None, :]
    b = cov_b / scale_a[..., :, None] / scale_a[..., None, :]
    root_a = _newton_schulz_sqrt(symmetrize(a), num_iters)
    root_b = _newton_schulz_sqrt(symmetrize(b), num_iters)
    cross = jnp.matmul(root_a, root_b, precision=HIGHEST)
    return _newton_schulz_nuclear_norm(cross, 2 * num_iters)


def trace_product(cov_a: jax.Array, cov_b: jax.Array) -> jax.Array:
    """tr(Σ_a Σ_b) for symmetric inputs: the published "fast" mode's stand-in for the root."""
    return jnp.sum(cov_a * cov_b, axis=(-2, -1))


PUBLISHED_FAST_STEPS = 5


def published_fast_trace(cov_a: jax.Array, cov_b: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """The published tool's five-step "fast" square-root iteration on A = Σ_a Σ_b, literally
    (docs/mir.md, section 6). cov_a, cov_b: [..., D, D].

    Returns (tr(Y) [...] after the five steps, tr(A) [...] (the exact-arithmetic result),
    condition [...] = ||A||_F ||A⁻¹||_F from the last inverse taken).
    """

    def one(a_cov, b_cov):
        a = jnp.matmul(a_cov, b_cov, precision=HIGHEST)
        eye = jnp.eye(a.shape[-1], dtype=a.dtype)

        def step(_, carry):
            y, z, _ = carry
            y = 0.5 * (y + jnp.matmul(jnp.linalg.inv(z), a, precision=HIGHEST))
            y_inv = jnp.linalg.inv(y)
            z = 0.5 * (z + jnp.matmul(y_inv, a, precision=HIGHEST))
            return y, z, y_inv

        y, _, y_inv = lax.fori_loop(0, PUBLISHED_FAST_STEPS, step, (a, eye, eye))
        condition = jnp.sqrt(jnp.sum(a * a)) * jnp.sqrt(jnp.sum(y_inv * y_inv))
        return jnp.trace(y), jnp.trace(a), condition

    # One matrix at a time on CPU: batched LAPACK calls can deadlock there (see per_matrix).
    return per_matrix(one, cov_a, cov_b)
