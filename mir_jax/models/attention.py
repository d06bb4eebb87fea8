"""Softmax attention: one entry point (`attention`), four implementations, one mask type.

Shapes throughout: q [B, S, H, Dh]; k, v [B, T, KVH, Dh] with H a multiple of KVH (GQA as
HF's `repeat_kv`); output [B, S, H, Dh]. Implementations (config key `attention`, "auto"
resolved by `select_implementation`): "dense" (`dense_attention`, scores [B, H, S, T]),
"blockwise" (`blockwise_attention`, online softmax over tiles, custom VJP), "cudnn"
(`cudnn_attention`) and "pallas" (`pallas_attention`, TPU splash). Decoding steps over a KV
cache take `cache_attention`. Masks are described, not materialized (`Mask`). Rows with no
key to attend to give finite outputs (never NaN) and zero gradient.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from mir_jax.models.backend import on_cpu
from mir_jax.sharding import active_mesh, logical_to_mesh_spec

IMPLEMENTATIONS = ("auto", "dense", "blockwise", "cudnn", "pallas")

# "auto" for what no kernel takes (GPU float32, TPU with a mask array, CPU under a multi-device
# mesh): dense below this many keys, blockwise from it, where blockwise is faster and its memory
# stays O(S) while dense holds [B, H, S, T] residuals (BENCHMARKS.md, "Attention").
BLOCKWISE_MIN_KV = 1024
# On one CPU device "auto" takes the looped blockwise path from this many scores a head; below
# it the per-slice loop costs more than it saves.
CPU_BLOCKWISE_MIN_SCORES = 128 * 128
# Default tiles of the batched blockwise path, balanced so that padding is small; a tile's
# float32 scores are B*H*256*256*4 bytes.
BLOCK_Q = 256
BLOCK_KV = 256
# Tiles of the looped (one CPU device) path: 128-row blocks let causal attention skip the keys
# above the diagonal; without a causal mask whole rows of up to 1024 keys avoid the online
# rescale. The fastest of those tried (BENCHMARKS.md, "Attention").
CPU_BLOCK = 128
CPU_BLOCK_KV_BIDIRECTIONAL = 1024
# Up to this many scores a head, a looped slice's query blocks are unrolled, each against all the
# keys it can see in one plain softmax: loops and the online rescale cost more than they save
# there (BENCHMARKS.md, "session 19").
CPU_UNROLL_MAX_SCORES = 1024 * 1024
# Fewer queries than this are a decoding step: "auto" picks "dense" for them on every backend,
# and the decoder attends them straight over its head-major KV cache (`cache_attention`).
DECODE_MAX_QUERIES = 16
_NEG_INF = -jnp.inf


def validate_implementation(name: str) -> str:
    if name not in IMPLEMENTATIONS:
        raise ValueError(f"attention implementation {name!r} not in {IMPLEMENTATIONS}")
    return name


# ----------------------------------------------------------------------------------------------
# Masks
# ----------------------------------------------------------------------------------------------
@jax.tree_util.register_pytree_node_class
@dataclasses.dataclass(frozen=True)
class Mask:
    """Which keys each query may attend to; every given condition must hold.

    causal:          key j only if j <= q_offset + i (q_offset: 0 for self-attention, the
                     cache index when decoding).
    q_offset:        a Python int (static through jit) or an int32 scalar array.
    q_segment_ids,
    kv_segment_ids:  [B, S], [B, T] int; key j only if its id equals the query's and is not 0
                     (0 = padding). Both or neither.
    kv_valid:        [B, T] bool; key j only if True (key padding).
    dense:           [B or 1, S, T] bool; an explicit mask (True = may attend).
    """

    causal: bool = False
    q_offset: Any = 0
    q_segment_ids: jax.Array | None = None
    kv_segment_ids: jax.Array | None = None
    kv_valid: jax.Array | None = None
    dense: jax.Array | None = None

    def __post_init__(self):
        if (self.q_segment_ids is None) != (self.kv_segment_ids is None):
            raise ValueError("Mask: give both q_segment_ids and kv_segment_ids, or neither")

    def tree_flatten(self):
        static = isinstance(self.q_offset, (int, np.integer))
        children = (None if static else self.q_offset, self.q_segment_ids, self.kv_segment_ids,
                    self.kv_valid, self.dense)
        return children, (self.causal, int(self.q_offset) if static else None)

    @classmethod
    def tree_unflatten(cls, aux, children):
        causal, offset = aux
        dynamic, *rest = children
        return cls(causal, offset if offset is not None else dynamic, *rest)

    @property
    def static_offset(self) -> int | None:
        """q_offset as a Python int when it is known at trace time, else None."""
        try:
            return int(self.q_offset)
        except (TypeError, jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError):
            return None

    @property
    def is_plain_causal(self) -> bool:
        """Causal self-attention from slot 0, nothing else."""
        return (self.causal and self.static_offset == 0 and self.q_segment_ids is None
                and self.kv_valid is None and self.dense is None)

    def materialize(self, s: int, t: int) -> jax.Array | None:
        """bool [B or 1, S, T] (True = may attend), or None when nothing is masked."""
        return _mask_tile(self, jnp.arange(s), jnp.arange(t), (0, s), (0, t))

    @staticmethod
    def of(mask) -> Mask:
        """A `Mask` from None, a bool [B or 1, S, T] array, or a `Mask`."""
        if mask is None:
            return Mask()
        if isinstance(mask, Mask):
            return mask
        mask = jnp.asarray(mask)
        if mask.ndim != 3 or mask.dtype != jnp.bool_:
            raise ValueError(f"attention mask must be bool [B, S, T] or a Mask, got {mask.dtype}{mask.shape}")
        return Mask(dense=mask)


def _mask_tile(mask: Mask, qpos, kpos, q_range, k_range) -> jax.Array | None:
    """bool [B or 1, len(qpos), len(kpos)] for the contiguous query/key index tiles (q_range /
    k_range = (start, size), start possibly traced); None when nothing is masked.
    """
    out = None

    def both(m):
        nonlocal out
        out = m if out is None else out & m

    def rows(x, start_size, axis=1):
        start, size = start_size
        return jax.lax.dynamic_slice_in_dim(x, start, size, axis=axis)

    if mask.causal:
        both((kpos[None, :] <= qpos[:, None] + jnp.asarray(mask.q_offset, jnp.int32))[None])
    if mask.q_segment_ids is not None:
        qs = rows(mask.q_segment_ids, q_range)[:, :, None]
        ks = rows(mask.kv_segment_ids, k_range)[:, None, :]
        both((qs == ks) & (ks != 0))
    if mask.kv_valid is not None:
        both(rows(mask.kv_valid, k_range)[:, None, :].astype(bool))
    if mask.dense is not None:
        d = rows(mask.dense, q_range, axis=1)
        both(rows(d, k_range, axis=2))
    return out


# ----------------------------------------------------------------------------------------------
# Entry point and selection
# ----------------------------------------------------------------------------------------------
def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask | jax.Array | None = None, *,
              implementation: str = "auto") -> jax.Array:
    """Grouped-query softmax attention. q [B, S, H, Dh]; k, v [B, T, KVH, Dh]; mask a `Mask`, a
    bool [B or 1, S, T] array (True = may attend) or None. Returns [B, S, H, Dh] in q's dtype.

    `implementation` is one of IMPLEMENTATIONS; "auto" picks by backend (`select_implementation`).
    """
    mask = Mask.of(mask)
    impl = select_implementation(implementation, q, k, mask)
    if impl == "dense":
        return dense_attention(q, k, v, mask)
    if impl == "blockwise":
        return blockwise_attention(q, k, v, mask)
    if impl == "cudnn":
        return cudnn_attention(q, k, v, mask)
    return pallas_attention(q, k, v, mask, interpret=jax.default_backend() != "tpu")


def select_implementation(name: str, q, k, mask: Mask | None = None, *, backend: str | None = None) -> str:
    """The implementation `attention` runs for `name` on `backend` (default: JAX's default).

    A name other than "auto" is returned as given (validated). "auto", in this order: fewer
    than DECODE_MAX_QUERIES queries: "dense"; GPU: "cudnn" for fp16/bf16 with head_dim a multiple
    of 8 and <= 128; TPU: "pallas" unless the mask has an explicit array or a traced causal
    offset; one CPU device: "blockwise" (looped) from CPU_BLOCKWISE_MIN_SCORES scores a head;
    otherwise "blockwise" from BLOCKWISE_MIN_KV keys; else "dense".
    """
    validate_implementation(name)
    if name != "auto":
        return name
    mask = Mask() if mask is None else mask
    backend = backend or jax.default_backend()
    s, t, dh = q.shape[1], k.shape[1], q.shape[-1]
    if s < DECODE_MAX_QUERIES:
        return "dense"
    if backend in ("gpu", "cuda", "rocm") and cudnn_supports(q.dtype, dh):
        return "cudnn"
    if backend == "tpu" and pallas_supports(mask):
        return "pallas"
    if backend == "cpu" and _one_device():
        return "dense" if s * t < CPU_BLOCKWISE_MIN_SCORES else "blockwise"
    return "dense" if t < BLOCKWISE_MIN_KV else "blockwise"


def cudnn_supports(dtype, head_dim: int) -> bool:
    return jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)) and head_dim % 8 == 0 \
        and head_dim <= 128


def pallas_supports(mask: Mask) -> bool:
    return mask.dense is None and (not mask.causal or mask.static_offset is not None)


# ----------------------------------------------------------------------------------------------
# Dense
# ----------------------------------------------------------------------------------------------
def dense_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask | jax.Array | None = None) -> jax.Array:
    """Scores [B, KVH, G, S, T] in float32, softmax, weighted sum. A fully masked query row gets
    the uniform average of the values."""
    mask = Mask.of(mask)
    m = mask.materialize(q.shape[1], k.shape[1])
    b, s, h, dh = q.shape
    kvh = k.shape[2]
    q = q.reshape(b, s, kvh, h // kvh, dh) * jnp.asarray(dh**-0.5, q.dtype)
    logits = jnp.einsum("bskgd,btkd->bkgst", q, k, preferred_element_type=jnp.float32)
    probs = _masked_softmax(logits, None if m is None else m[:, None, None], v.dtype)
    out = jnp.einsum("bkgst,btkd->bskgd", probs, v)
    return out.reshape(b, s, h, dh)


def cache_attention(q: jax.Array, ck: jax.Array, cv: jax.Array, mask: Mask | jax.Array | None = None) -> jax.Array:
    """Attention of new queries over a head-major KV cache (the decoding step's attention).

    q [B, S, H, Dh]; ck, cv [B, KVH, T, Dh] (`generate.init_cache`'s layout); mask over the T
    cache slots (causal with q_offset = the first query's slot, kv_valid for left padding).
    Returns [B, S, H, Dh] in q's dtype; a fully masked row gets the mean of the values.
    Head-major so each one-query dot streams its keys once (timings: BENCHMARKS.md, "Batched
    greedy generation").
    """
    mask = Mask.of(mask)
    b, s, h, dh = q.shape
    kvh, t = ck.shape[1], ck.shape[2]
    m = mask.materialize(s, t)
    qg = q.reshape(b, s, kvh, h // kvh, dh).transpose(0, 2, 3, 1, 4) * jnp.asarray(dh**-0.5, q.dtype)
    qg = qg.reshape(b, kvh, (h // kvh) * s, dh)  # [B, KVH, G*S, Dh]: one dot per (row, kv head)
    logits = jnp.einsum("bkqd,bktd->bkqt", qg, ck.astype(q.dtype), preferred_element_type=jnp.float32)
    logits = logits.reshape(b, kvh, h // kvh, s, t)
    probs = _masked_softmax(logits, None if m is None else m[:, None, None], q.dtype)
    out = jnp.einsum("bkqt,bktd->bkqd", probs.reshape(b, kvh, -1, t), cv.astype(q.dtype))
    return out.reshape(b, kvh, h // kvh, s, dh).transpose(0, 3, 1, 2, 4).reshape(b, s, h, dh)


def _masked_softmax(logits: jax.Array, mask: jax.Array | None, dtype) -> jax.Array:
    """Softmax over the last axis of float32 scores, masked-out entries at the float32 minimum
    (a fully masked row becomes uniform, not NaN), cast to `dtype` for the weighted sum."""
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    return jax.nn.softmax(logits, axis=-1).astype(dtype)


# ----------------------------------------------------------------------------------------------
# Blockwise (online softmax, custom VJP)
# ----------------------------------------------------------------------------------------------
class _Blocks(NamedTuple):
    """Static description of a blockwise call (hashable: a custom_vjp nondiff argument)."""

    causal: bool
    s: int  # true lengths (the padded ones are n * block)
    t: int
    block_q: int
    block_kv: int
    kv_heads: int  # > 0: the arrays are [B * kv_heads, n, 1, 1, ...] slices, looped over
    unrolled: bool = False  # the query blocks unrolled, each against its visible keys at once
    offset: int = 0  # the causal offset, static when unrolled


def blockwise_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask | jax.Array | None = None, *,
                        block_q: int | None = None, block_kv: int | None = None,
                        head_loop: bool | None = None) -> jax.Array:
    """Attention over [block_q, block_kv] tiles with an online softmax (FlashAttention-2 in pure JAX).

    q [B, S, H, Dh]; k, v [B, T, KVH, Dh]; returns [B, S, H, Dh]. Only one tile of scores per
    head exists at a time; the custom VJP saves the output and the row log-sum-exp [B, H, S] and
    recomputes each tile's probabilities. Causal masks skip the key blocks above the diagonal;
    lengths need not divide the blocks (balanced, padded and masked). Fully masked rows return 0.

    head_loop: run the (batch row, kv head) slices one after another (`lax.map`) rather than
    batched; None = on one CPU device (`head_loop_default`). Block sizes default to BLOCK_Q x
    BLOCK_KV batched, CPU_BLOCK (keys: CPU_BLOCK causal, else CPU_BLOCK_KV_BIDIRECTIONAL) looped.
    A looped slice of at most CPU_UNROLL_MAX_SCORES scores with a static causal offset unrolls
    its query blocks (one block of all queries without a causal mask), each against all the keys
    it sees in one plain softmax: no loop and no online rescale.
    """
    mask = Mask.of(mask)
    b, s, h, dh = q.shape
    t, kvh = k.shape[1], k.shape[2]
    g = h // kvh
    if head_loop is None:
        head_loop = head_loop_default()
    unrolled = head_loop and mask.static_offset is not None and s * t <= CPU_UNROLL_MAX_SCORES
    if head_loop:
        # Unrolled without a causal mask, every query sees every key: one block of all of them.
        block_q = block_q or (s if unrolled and not mask.causal else CPU_BLOCK)
        block_kv = block_kv or (CPU_BLOCK if mask.causal else CPU_BLOCK_KV_BIDIRECTIONAL)
    bq, bkv = _balanced_block(s, block_q or BLOCK_Q), _balanced_block(t, block_kv or BLOCK_KV)
    nq, nk = -(-s // bq), -(-t // bkv)
    sp, tp = nq * bq, nk * bkv

    def pad(x, axis, to):
        if x is None or x.shape[axis] == to:
            return x
        widths = [(0, 0)] * x.ndim
        widths[axis] = (0, to - x.shape[axis])
        return jnp.pad(x, widths)

    qr = (pad(q, 1, sp) * jnp.asarray(dh**-0.5, q.dtype)).reshape(b, nq, bq, kvh, g, dh)
    kr, vr = (pad(x, 1, tp).reshape(b, nk, bkv, kvh, dh) for x in (k, v))
    if head_loop and (mask.q_segment_ids is not None or mask.kv_valid is not None) and s * t <= 1024 * 1024:
        # Cut per slice, segment ids and key padding cost more than a [B, S, T] bool mask (one
        # byte a score) made once: the causal part stays computed per tile.
        rest = dataclasses.replace(mask, causal=False, q_offset=0)
        m = rest.materialize(s, t)
        mask = Mask(mask.causal, mask.q_offset, dense=jnp.broadcast_to(m, (m.shape[0], s, t)))
    dense = mask.dense
    if dense is not None:
        dense = pad(pad(dense.astype(bool), 1, sp), 2, tp)
    ops = (jnp.asarray(mask.q_offset, jnp.int32), pad(mask.q_segment_ids, 1, sp),
           pad(mask.kv_segment_ids, 1, tp), pad(mask.kv_valid, 1, tp), dense)
    spec = _Blocks(mask.causal, s, t, bq, bkv, kvh if head_loop else 0, unrolled,
                   mask.static_offset if unrolled else 0)
    if head_loop:  # one slice a (batch row, kv head): the same blocks with B = KVH = 1
        qb = qr.transpose(0, 3, 1, 4, 2, 5).reshape(b * kvh, nq, 1, 1, g, bq, dh)
        kb, vb = (x.transpose(0, 3, 1, 2, 4).reshape(b * kvh, nk, 1, 1, bkv, dh) for x in (kr, vr))
        out = _blockwise(spec, qb, kb, vb, ops)  # [B * KVH, nq, 1, 1, G, bq, Dh]
        out = out.reshape(b, kvh, nq, g, bq, dh).transpose(0, 2, 4, 1, 3, 5)
    else:
        qb = qr.transpose(1, 0, 3, 4, 2, 5)  # [nq, B, KVH, G, bq, Dh]
        kb, vb = (x.transpose(1, 0, 3, 2, 4) for x in (kr, vr))  # [nk, B, KVH, bkv, Dh]
        out = _blockwise(spec, qb, kb, vb, ops).transpose(1, 0, 4, 2, 3, 5)  # [B, nq, bq, KVH, G, Dh]
    return out.reshape(b, sp, h, dh)[:, :s]


def head_loop_default() -> bool:
    """Whether `blockwise_attention` loops over (batch row, kv head) slices by default: on one CPU
    device, where a slice's tiles stay in cache; not under a mesh, where that axis is sharded.
    """
    return on_cpu() and _one_device()


def _one_device() -> bool:
    mesh = active_mesh()
    return mesh is None or mesh.size == 1


def _balanced_block(n: int, block: int) -> int:
    """A block of at most ~`block` that splits n into equal blocks (a multiple of 8 when there are
    several), so that padding stays under 8 per block: 577 with 256 -> 3 blocks of 200."""
    count = -(-n // block)
    return n if count == 1 else _round_up(-(-n // count), 8)


def _tile(spec: _Blocks, ops, i, k_start, k_size: int):
    """bool [B or 1, 1, 1, bq, k_size] for query block i and keys [k_start, k_start + k_size), or
    None."""
    offset, q_seg, kv_seg, kv_valid, dense = ops
    qpos = i * spec.block_q + jnp.arange(spec.block_q)
    kpos = k_start + jnp.arange(k_size)
    m = _mask_tile(Mask(spec.causal, offset, q_seg, kv_seg, kv_valid, dense), qpos, kpos,
                   (i * spec.block_q, spec.block_q), (k_start, k_size))
    if spec.t % spec.block_kv and not spec.unrolled:  # padded keys (unrolled: never read)
        real = (kpos < spec.t)[None, None, :]
        m = real if m is None else m & real
    return None if m is None else m[:, None, None]


def _kv_range(spec: _Blocks, offset, i, nk: int):
    """Key blocks [lo, hi) that query block i can see."""
    if not spec.causal:
        return 0, nk
    last_query = offset + (i + 1) * spec.block_q - 1
    return 0, jnp.clip(last_query // spec.block_kv + 1, 0, nk)


def _q_range(spec: _Blocks, offset, j, nq: int):
    """Query blocks [lo, hi) that can see key block j."""
    if not spec.causal:
        return 0, nq
    return jnp.clip((j * spec.block_kv - offset) // spec.block_q, 0, nq), nq


def _scores(spec, ops, qi, kj, i, k_start):
    """float32 [B, KVH, G, bq, n] scores of query block i against the n keys kj [B, KVH, n, Dh]
    from k_start, masked entries at -inf."""
    sc = jnp.einsum("bkmd,bktd->bkmt", _rows(qi), kj, preferred_element_type=jnp.float32)
    sc = sc.reshape(qi.shape[:-1] + kj.shape[-2:-1])
    m = _tile(spec, ops, i, k_start, kj.shape[-2])
    return sc if m is None else jnp.where(m, sc, _NEG_INF)


def _rows(x):
    """[B, KVH, G, bq, ...] -> [B, KVH, G * bq, ...]: the G query heads of a kv head as rows of
    one matmul."""
    return x.reshape(x.shape[:2] + (-1,) + x.shape[4:])


def _head_loop(spec: _Blocks, fn, ops, *arrays):
    """fn(ops, *arrays) batched, or (spec.kv_heads > 0) mapped over the arrays' leading
    (batch row, kv head) axis with each mask array cut to the slice's batch row."""
    if not spec.kv_heads:
        return fn(ops, *arrays)

    def one(args):
        row, *xs = args
        cut = tuple(None if x is None else jax.lax.dynamic_slice_in_dim(x, row if x.shape[0] > 1 else 0, 1)
                    for x in ops[1:])
        return fn((ops[0],) + cut, *xs)

    rows = jnp.arange(arrays[0].shape[0], dtype=jnp.int32) // spec.kv_heads
    return jax.lax.map(one, (rows,) + arrays)


def _blockwise_fwd_impl(spec: _Blocks, qb, kb, vb, ops):
    return _head_loop(spec, lambda ops, qb, kb, vb: _fwd_blocks(spec, qb, kb, vb, ops), ops, qb, kb, vb)


def _fwd_blocks(spec: _Blocks, qb, kb, vb, ops):
    """(out [nq, B, KVH, G, bq, Dh], lse [nq, B, KVH, G, bq]) of blocked q, k, v."""
    nq, nk = qb.shape[0], kb.shape[0]
    offset = ops[0]

    def q_block(i):
        qi = qb[i]
        shape = qi.shape[:-1]  # [B, KVH, G, bq]

        def body(j, carry):
            m, denom, acc = carry
            sc = _scores(spec, ops, qi, kb[j], i, j * spec.block_kv)
            m_new = jnp.maximum(m, sc.max(-1))
            m_safe = jnp.where(m_new == _NEG_INF, 0.0, m_new)  # rows with nothing seen yet
            p = jnp.exp(sc - m_safe[..., None])
            corr = jnp.exp(m - m_safe)
            denom = denom * corr + p.sum(-1)
            pv = jnp.einsum("bkmt,bktd->bkmd", _rows(p.astype(vb.dtype)), vb[j], preferred_element_type=jnp.float32)
            return m_new, denom, acc * corr[..., None] + pv.reshape(acc.shape)

        if spec.unrolled:  # the keys it sees as one block: a plain softmax, no running rescale
            keys, values = _visible(spec, kb, i), _visible(spec, vb, i)
            return _softmax_block(_scores(spec, ops, qi, keys, i, 0), values, qb.dtype)
        if nk == 1:
            return _softmax_block(_scores(spec, ops, qi, kb[0], i, 0), vb[0], qb.dtype)
        init = (jnp.full(shape, _NEG_INF, jnp.float32), jnp.zeros(shape, jnp.float32),
                jnp.zeros(shape + (vb.shape[-1],), jnp.float32))
        return _normalized(*jax.lax.fori_loop(*_kv_range(spec, offset, i, nk), body, init), qb.dtype)

    if spec.unrolled:
        return jax.tree.map(lambda *xs: jnp.stack(xs), *[q_block(i) for i in range(nq)])
    if nq == 1:
        return jax.tree.map(lambda x: x[None], q_block(0))
    return jax.lax.map(q_block, jnp.arange(nq))


def _visible(spec: _Blocks, blocks, i: int):
    """The keys (or values) of blocked [nk, B, KVH, bkv, Dh] that query block i sees, as one
    block [B, KVH, n, Dh]: every real key, or under a causal mask those up to its last query."""
    nk, b, kvh, bkv, dh = blocks.shape
    end = spec.t
    if spec.causal:
        end = max(1, min(spec.t, (i + 1) * spec.block_q + spec.offset))
    return blocks.transpose(1, 2, 0, 3, 4).reshape(b, kvh, nk * bkv, dh)[:, :, :end]


def _as_blocks(x, like):
    """[B, KVH, n, Dh] (n <= nk * bkv) back to `like`'s blocked [nk, B, KVH, bkv, Dh], zero-padded."""
    nk, b, kvh, bkv, dh = like.shape
    x = jnp.pad(x, ((0, 0), (0, 0), (0, nk * bkv - x.shape[2]), (0, 0)))
    return x.reshape(b, kvh, nk, bkv, dh).transpose(2, 0, 1, 3, 4).astype(like.dtype)


def _softmax_block(sc, values, dtype):
    """(out, lse) of a plain softmax over all of a query block's scores sc [B, KVH, G, bq, n]
    against values [B, KVH, n, Dh]."""
    m = sc.max(-1)
    p = jnp.exp(sc - jnp.where(m == _NEG_INF, 0.0, m)[..., None])
    acc = jnp.einsum("bkmt,bktd->bkmd", _rows(p.astype(values.dtype)), values, preferred_element_type=jnp.float32)
    return _normalized(m, p.sum(-1), acc.reshape(sc.shape[:-1] + values.shape[-1:]), dtype)


def _normalized(m, denom, acc, dtype):
    """(out, lse) from the running max m, denominator and unnormalized output acc."""
    seen = denom > 0
    out = acc / jnp.where(seen, denom, 1.0)[..., None]
    lse = jnp.where(seen, m + jnp.log(jnp.where(seen, denom, 1.0)), jnp.inf)  # +inf: p = 0 in bwd
    return out.astype(dtype), lse


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _blockwise(spec: _Blocks, qb, kb, vb, ops):
    return _blockwise_fwd_impl(spec, qb, kb, vb, ops)[0]


def _blockwise_fwd(spec, qb, kb, vb, ops):
    out, lse = _blockwise_fwd_impl(spec, qb, kb, vb, ops)
    return out, (qb, kb, vb, ops, out, lse)


def _blockwise_bwd(spec, res, dout):
    qb, kb, vb, ops, out, lse = res
    dq, dk, dv = _head_loop(spec, lambda ops, *xs: _bwd_blocks(spec, ops, *xs), ops, qb, kb, vb, out, lse, dout)
    ops_ct = jax.tree.map(lambda x: np.zeros(x.shape, jax.dtypes.float0) if x is not None else None, ops)
    return dq, dk, dv, ops_ct


def _bwd_blocks(spec: _Blocks, ops, qb, kb, vb, out, lse, dout):
    """(dq, dk, dv) of blocked q, k, v from the forward's out, lse and the output cotangent."""
    nq, nk = qb.shape[0], kb.shape[0]
    offset = ops[0]
    dout = dout.astype(qb.dtype)
    delta = jnp.sum(dout.astype(jnp.float32) * out.astype(jnp.float32), axis=-1)  # [nq, B, KVH, G, bq]

    def tile_grads(i, kj, vj, k_start):
        """(dk, dv, dq) of query block i's tile against keys kj / values vj from k_start."""
        qi, doi = qb[i], dout[i]
        p = jnp.exp(_scores(spec, ops, qi, kj, i, k_start) - lse[i][..., None])  # 0 where masked
        dv = jnp.einsum("bkmt,bkmd->bktd", _rows(p.astype(doi.dtype)), _rows(doi), preferred_element_type=jnp.float32)
        dp = jnp.einsum("bkmd,bktd->bkmt", _rows(doi), vj, preferred_element_type=jnp.float32)
        ds = (p * (dp.reshape(p.shape) - delta[i][..., None])).astype(qi.dtype)
        dk = jnp.einsum("bkmt,bkmd->bktd", _rows(ds), _rows(qi), preferred_element_type=jnp.float32)
        dqi = jnp.einsum("bkmt,bktd->bkmd", _rows(ds), kj, preferred_element_type=jnp.float32)
        return dk, dv, dqi.reshape(qi.shape)

    if spec.unrolled:  # each query block against its visible keys, as in the forward
        _, b, kvh, _, dh = kb.shape
        dk = dv = jnp.zeros((b, kvh, spec.t, dh), jnp.float32)
        dqs = []
        for i in range(nq):
            kj, vj = _visible(spec, kb, i), _visible(spec, vb, i)
            dki, dvi, dqi = tile_grads(i, kj, vj, 0)
            dk, dv = dk.at[:, :, :kj.shape[2]].add(dki), dv.at[:, :, :kj.shape[2]].add(dvi)
            dqs.append(dqi)
        return jnp.stack(dqs).astype(qb.dtype), _as_blocks(dk, kb), _as_blocks(dv, vb)

    def kv_block(dq, j):
        kj, vj = kb[j], vb[j]

        def body(i, carry):
            dk, dv, dq = carry
            dki, dvi, dqi = tile_grads(i, kj, vj, j * spec.block_kv)
            dq = jax.lax.dynamic_update_index_in_dim(dq, dq[i] + dqi, i, axis=0)
            return dk + dki, dv + dvi, dq

        lo, hi = _q_range(spec, offset, j, nq)
        zeros = jnp.zeros(kj.shape, jnp.float32)
        carry = (zeros, jnp.zeros(vj.shape, jnp.float32), dq)
        # One query block: its body once (its tile's mask covers what the range would skip).
        dk, dv, dq = body(0, carry) if nq == 1 else jax.lax.fori_loop(lo, hi, body, carry)
        return dq, (dk.astype(kb.dtype), dv.astype(vb.dtype))

    if nk == 1:
        dq, (dk, dv) = kv_block(jnp.zeros(qb.shape, jnp.float32), 0)
        dk, dv = dk[None], dv[None]
    else:
        dq, (dk, dv) = jax.lax.scan(kv_block, jnp.zeros(qb.shape, jnp.float32), jnp.arange(nk))
    return dq.astype(qb.dtype), dk, dv


_blockwise.defvjp(_blockwise_fwd, _blockwise_bwd)


# ----------------------------------------------------------------------------------------------
# cuDNN (GPU)
# ----------------------------------------------------------------------------------------------
def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask | jax.Array | None = None, *,
                    implementation: str = "cudnn") -> jax.Array:
    """`jax.nn.dot_product_attention` (BTNH layout, GQA native). Plain causal self-attention passes
    `is_causal` only; any other mask goes in as a bool [B, 1, S, T]. `implementation="xla"` runs
    the same call through XLA (tests).
    """
    mask = Mask.of(mask)
    plain = mask.is_plain_causal and q.shape[1] == k.shape[1]
    m = None if plain else mask.materialize(q.shape[1], k.shape[1])
    if m is not None:
        m = jnp.broadcast_to(m[:, None], (m.shape[0], 1) + m.shape[1:])
    return jax.nn.dot_product_attention(q, k, v, mask=m, is_causal=plain, implementation=implementation)


# ----------------------------------------------------------------------------------------------
# Pallas splash attention (TPU)
# ----------------------------------------------------------------------------------------------
def pallas_attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: Mask | jax.Array | None = None, *,
                     block: int = 512, interpret: bool = False) -> jax.Array:
    """The Pallas TPU splash-attention kernel, vmapped over the batch, GQA native.

    Causal masks need a static offset; segment ids and key padding become `SegmentIds` (padding
    keys get id -1); an explicit mask array is not supported. Lengths are padded to a multiple
    of the block. Under an active mesh it runs in `shard_map` (batch over "batch", heads over
    "act_heads"). `interpret=True` runs Pallas' interpreter (any backend).
    """
    from jax.experimental.pallas.ops.tpu import splash_attention as splash

    mask = Mask.of(mask)
    if not pallas_supports(mask):
        raise ValueError("pallas attention takes causal (static offset), segment ids and key padding, "
                         "not an explicit mask array or a traced causal offset")
    b, s, h, dh = q.shape
    t, kvh = k.shape[1], k.shape[2]
    bq = min(block, _round_up(s, 128))
    bkv = min(block, _round_up(t, 128))
    sp, tp = _round_up(s, bq), _round_up(t, bkv)
    q = q * jnp.asarray(dh**-0.5, q.dtype)  # the kernel does not scale

    # Segment ids: query ids as given (or 1); keys -1 where padding, invalid or beyond T.
    seg = None
    if mask.q_segment_ids is not None or mask.kv_valid is not None or tp != t:
        if mask.q_segment_ids is not None:
            qs, ks = mask.q_segment_ids.astype(jnp.int32), mask.kv_segment_ids.astype(jnp.int32)
            ks = jnp.where(ks != 0, ks, -1)
        else:
            qs, ks = jnp.ones((b, s), jnp.int32), jnp.ones((b, t), jnp.int32)
        if mask.kv_valid is not None:
            ks = jnp.where(mask.kv_valid.astype(bool), ks, -1)
        qs = jnp.pad(jnp.broadcast_to(qs, (b, s)), ((0, 0), (0, sp - s)), constant_values=-2)
        ks = jnp.pad(jnp.broadcast_to(ks, (b, t)), ((0, 0), (0, tp - t)), constant_values=-1)
        seg = (qs, ks)

    def to_heads(x, n):  # [B, L, heads, Dh] -> [B, heads, n, Dh] padded
        return jnp.pad(x, ((0, 0), (0, n - x.shape[1]), (0, 0), (0, 0))).transpose(0, 2, 1, 3)

    qh, kh, vh = to_heads(q, sp), to_heads(k, tp), to_heads(v, tp)
    offset = mask.static_offset if mask.causal else None

    def local(qh, kh, vh, seg):
        heads = qh.shape[1]
        if offset is None:
            head_mask = splash.FullMask((sp, tp))
        else:
            head_mask = splash.CausalMask((sp, tp), offset=offset)
        sizes = splash.BlockSizes(block_q=bq, block_kv=bkv, block_kv_compute=bkv, block_q_dkv=bq,
                                  block_kv_dkv=bkv, block_kv_dkv_compute=bkv, block_q_dq=bq, block_kv_dq=bkv)
        kernel = splash.make_splash_mha(splash.MultiHeadMask([head_mask] * heads), block_sizes=sizes,
                                        head_shards=1, q_seq_shards=1, interpret=interpret)
        if seg is None:
            return jax.vmap(kernel)(qh, kh, vh)
        return jax.vmap(lambda a, b_, c, qs, ks: kernel(a, b_, c, segment_ids=splash.SegmentIds(qs, ks)))(
            qh, kh, vh, *seg)

    mesh = active_mesh()
    if mesh is not None and mesh.size > 1:
        batch, heads = logical_to_mesh_spec(("batch", "act_heads"))
        head_size = 1 if heads is None else math.prod(
            mesh.shape[a] for a in ((heads,) if isinstance(heads, str) else heads))
        if kvh % head_size:
            heads = None  # kv heads do not split over the tensor axis: replicate heads
        P = jax.sharding.PartitionSpec
        hspec = P(batch, heads, None, None)
        sspec = None if seg is None else (P(batch, None), P(batch, None))
        local = jax.shard_map(local, in_specs=(hspec, hspec, hspec, sspec), out_specs=hspec,
                              check_vma=False)
    out = local(qh, kh, vh, seg)  # [B, H, sp, Dh]
    return out.transpose(0, 2, 1, 3)[:, :s]


def _round_up(n: int, m: int) -> int:
    return -(-n // m) * m
