"""Shared building blocks: parameters with logical axis names, dense/norm layers, rotary
embeddings, multi-head attention (its implementations: `mir_jax.models.attention`), masks and
layer stacking (scan + remat).

Parameters are float32 and are cast to the compute dtype at use; normalizations and softmax run
in float32 (as HF does) so bf16 compute stays stable.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from mir_jax.models.attention import Mask, attention, validate_implementation
from mir_jax.models.backend import on_cpu
from mir_jax.sharding import active_mesh, constrain

Init = Callable[..., jax.Array]


def param(rngs: nnx.Rngs | None, init: Init, shape: Sequence[int], names: Sequence[str | None]) -> nnx.Param:
    """A float32 `nnx.Param` carrying logical axis names as `out_sharding` metadata; eager
    sharding only when a mesh is active (models are also built without one).
    """
    shape = tuple(shape)
    if len(names) != len(shape):
        raise ValueError(f"logical names {tuple(names)} do not match parameter shape {shape}")
    eager = active_mesh() is not None
    key = rngs.params() if rngs is not None else jax.random.key(0)
    value = init(key, shape, jnp.float32)
    return nnx.Param(value, out_sharding=tuple(names), eager_sharding=eager)


def zeros(key, shape, dtype=jnp.float32):
    return jnp.zeros(shape, dtype)


def ones(key, shape, dtype=jnp.float32):
    return jnp.ones(shape, dtype)


def normal(std: float, mean: float = 0.0) -> Init:
    def init(key, shape, dtype=jnp.float32):
        return mean + std * jax.random.normal(key, shape, dtype)

    return init


def lecun(fan_in_axes: Sequence[int] = (0,)) -> Init:
    """Truncated-normal-free LeCun-style init over the given fan-in axes (a reasonable default:
    real checkpoints overwrite it)."""

    def init(key, shape, dtype=jnp.float32):
        fan_in = 1
        for a in fan_in_axes:
            fan_in *= shape[a]
        return jax.random.normal(key, shape, dtype) * (fan_in**-0.5)

    return init


# ----------------------------------------------------------------------------------------------
# Activations (names as in HF's ACT2FN)
# ----------------------------------------------------------------------------------------------
def quick_gelu(x):
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": lambda x: jax.nn.gelu(x, approximate=False),
    "gelu_pytorch_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_new": lambda x: jax.nn.gelu(x, approximate=True),
    "gelu_tanh": lambda x: jax.nn.gelu(x, approximate=True),
    "quick_gelu": quick_gelu,
    "silu": jax.nn.silu,
    "relu": jax.nn.relu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; known: {sorted(ACTIVATIONS)}") from None


# ----------------------------------------------------------------------------------------------
# Layers
# ----------------------------------------------------------------------------------------------
class Dense(nnx.Module):
    """y = x @ kernel + bias; kernel [*in_shape, *out_shape] (einsum-style multi-dim in/out so
    attention projections keep a separate heads axis for tensor parallelism)."""

    def __init__(self, in_shape: Sequence[int] | int, out_shape: Sequence[int] | int,
                 names: Sequence[str | None], *, bias: bool, dtype, rngs: nnx.Rngs,
                 init: Init | None = None):
        in_shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
        out_shape = (out_shape,) if isinstance(out_shape, int) else tuple(out_shape)
        self.n_in, self.n_out = len(in_shape), len(out_shape)
        self.dtype = dtype
        init = init or lecun(tuple(range(self.n_in)))
        self.kernel = param(rngs, init, in_shape + out_shape, names)
        self.bias = param(rngs, zeros, out_shape, names[self.n_in:]) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        """x [..., *in_shape] -> [..., *out_shape], as one 2-D matmul (XLA:CPU runs a dot_general with
        several free dimensions far slower; BENCHMARKS.md, "Components").
        """
        k = self.kernel[...].astype(self.dtype)
        x = x.astype(self.dtype)
        lead, in_shape = x.shape[:x.ndim - self.n_in], x.shape[x.ndim - self.n_in:]
        out_shape = k.shape[self.n_in:]
        y = jnp.matmul(x.reshape(-1, math.prod(in_shape)), k.reshape(math.prod(in_shape), -1))
        y = y.reshape(*lead, *out_shape)
        if self.bias is not None:
            y = y + self.bias[...].astype(self.dtype)
        return y


class LayerNorm(nnx.Module):
    def __init__(self, dim: int, eps: float, *, names=("norm",), rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = param(rngs, ones, (dim,), names)
        self.bias = param(rngs, zeros, (dim,), names)

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        x = x.astype(jnp.float32)
        mean = x.mean(-1, keepdims=True)
        var = jnp.square(x - mean).mean(-1, keepdims=True)
        y = (x - mean) * jax.lax.rsqrt(var + self.eps)
        return (y * self.scale[...] + self.bias[...]).astype(dtype)


class RMSNorm(nnx.Module):
    """Llama RMSNorm: normalizes in float32, casts back, then multiplies by the weight (HF order)."""

    def __init__(self, dim: int, eps: float, *, rngs: nnx.Rngs | None = None):
        self.eps = eps
        self.scale = param(rngs, ones, (dim,), ("norm",))

    def __call__(self, x: jax.Array) -> jax.Array:
        dtype = x.dtype
        xf = x.astype(jnp.float32)
        y = xf * jax.lax.rsqrt(jnp.mean(jnp.square(xf), -1, keepdims=True) + self.eps)
        return self.scale[...].astype(dtype) * y.astype(dtype)


# ----------------------------------------------------------------------------------------------
# Rotary embeddings (HF "rotate_half" layout: the two halves of head_dim are the pairs)
# ----------------------------------------------------------------------------------------------
def rope_cos_sin(positions: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """positions [B, S] int -> cos, sin [B, S, head_dim] float32."""
    inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
    freqs = positions.astype(jnp.float32)[..., None] * inv_freq
    emb = jnp.concatenate([freqs, freqs], axis=-1)
    return jnp.cos(emb), jnp.sin(emb)


def apply_rope(x: jax.Array, cos: jax.Array, sin: jax.Array) -> jax.Array:
    """x [B, S, H, Dh]; cos/sin [B, S, Dh]."""
    half = x.shape[-1] // 2
    rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    cos, sin = cos[:, :, None, :].astype(x.dtype), sin[:, :, None, :].astype(x.dtype)
    return x * cos + rot * sin


# ----------------------------------------------------------------------------------------------
# Attention (implementations and their selection: mir_jax.models.attention)
# ----------------------------------------------------------------------------------------------
class MultiHeadAttention(nnx.Module):
    """Bidirectional MHA with biases (ViT encoder layers, attention pooling). `attention` names
    the implementation (`mir_jax.models.attention.IMPLEMENTATIONS`)."""

    def __init__(self, dim: int, num_heads: int, *, dtype, rngs: nnx.Rngs, kv_dim: int | None = None,
                 names=("vision_embed", "vision_heads", "head_dim"), attention: str = "auto"):
        hd = dim // num_heads
        kv_dim = kv_dim or dim
        e, h, d = names
        self.attention_impl = validate_implementation(attention)
        self.q_proj = Dense(dim, (num_heads, hd), (e, h, d), bias=True, dtype=dtype, rngs=rngs)
        self.k_proj = Dense(kv_dim, (num_heads, hd), (e, h, d), bias=True, dtype=dtype, rngs=rngs)
        self.v_proj = Dense(kv_dim, (num_heads, hd), (e, h, d), bias=True, dtype=dtype, rngs=rngs)
        self.out_proj = Dense((num_heads, hd), dim, (h, d, e), bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, kv: jax.Array | None = None) -> jax.Array:
        kv = x if kv is None else kv
        q, k, v = self.q_proj(x), self.k_proj(kv), self.v_proj(kv)
        q = constrain(q, ("batch", "length", "act_heads", None))
        return self.out_proj(attention(q, k, v, None, implementation=self.attention_impl))


# ----------------------------------------------------------------------------------------------
# Masks and positions
# ----------------------------------------------------------------------------------------------
def text_mask(attention_mask: jax.Array | None, segment_ids: jax.Array | None) -> Mask:
    """The decoder's mask, described: causal, restricted to real keys (attention_mask [B, S],
    nonzero = real) or to the query's own segment (segment_ids [B, S]; 0 = padding)."""
    valid = None if attention_mask is None else attention_mask != 0
    return Mask(causal=True, q_segment_ids=segment_ids, kv_segment_ids=segment_ids, kv_valid=valid)


def causal_mask(attention_mask: jax.Array | None, segment_ids: jax.Array | None, length: int) -> jax.Array:
    """`text_mask` materialized: bool [B or 1, S, S] (True = may attend)."""
    return text_mask(attention_mask, segment_ids).materialize(length, length)


def default_positions(attention_mask: jax.Array | None, segment_ids: jax.Array | None,
                      batch: int, length: int) -> jax.Array:
    """Positions [B, S] int32 when none are given: restarting at 0 per segment, or with an
    attention mask the number of earlier real tokens (HF `generate`'s rule).
    """
    idx = jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length))
    if segment_ids is not None:
        starts = jnp.concatenate(
            [jnp.ones((batch, 1), bool), segment_ids[:, 1:] != segment_ids[:, :-1]], axis=1)
        first = jax.lax.cummax(jnp.where(starts, idx, 0), axis=1)
        return idx - first
    if attention_mask is not None:
        pos = jnp.cumsum(attention_mask.astype(jnp.int32), axis=1) - 1
        return jnp.maximum(pos, 0)
    return idx


# ----------------------------------------------------------------------------------------------
# Stacked layers
# ----------------------------------------------------------------------------------------------
def remat_policy(name: str):
    return {
        "full": jax.checkpoint_policies.nothing_saveable,
        "dots": jax.checkpoint_policies.checkpoint_dots,
        "dots_no_batch": jax.checkpoint_policies.checkpoint_dots_with_no_batch_dims,
    }[name]


def make_stack(n: int, make_layer: Callable[[nnx.Rngs], nnx.Module], rngs: nnx.Rngs) -> nnx.Module:
    """n layers whose parameters are stacked on a leading "layers" axis (one layer's graph)."""

    @nnx.split_rngs(splits=n)
    @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
    def create(r: nnx.Rngs):
        return make_layer(r)

    return create(rngs)


# On XLA:CPU a scanned layer stack pays for stacking every layer's residuals (and gradients) into
# [L, ...] buffers and slicing them back, which an unrolled loop over the same stacked parameters
# does not (BENCHMARKS.md, "Components"); stacks this shallow compile quickly unrolled, so there
# they run unrolled. Accelerators keep the scan (compile time independent of depth).
_CPU_UNROLL_MAX_LAYERS = 8


def run_stack(stack: nnx.Module, body: Callable, carry, xs=None, *, n: int | None = None,
              scan: bool = True, remat: str = "none", cpu_unroll: bool = True):
    """Applies `body(layer, carry, x) -> (carry, y)` over the first `n` stacked layers, in one
    `lax.scan` with `scan`, else unrolled; with `cpu_unroll` a stack of at most
    _CPU_UNROLL_MAX_LAYERS layers is unrolled on CPU anyway. `remat` names a checkpoint policy.
    Returns (carry, ys stacked on axis 0).
    """
    graphdef, state = nnx.split(stack)
    total = jax.tree.leaves(state)[0].shape[0]
    n = total if n is None else n
    if scan and cpu_unroll and on_cpu() and n <= _CPU_UNROLL_MAX_LAYERS:
        scan = False
    if n < total:
        state = jax.tree.map(lambda a: a[:n], state)

    def step(c, inp):
        layer_state, x = inp
        return body(nnx.merge(graphdef, layer_state), c, x)

    if remat != "none":
        step = jax.checkpoint(step, policy=remat_policy(remat), prevent_cse=not scan)
    if scan:
        return jax.lax.scan(step, carry, (state, xs))
    ys = []
    for i in range(n):
        carry, y = step(carry, jax.tree.map(lambda a, i=i: a[i], (state, xs)))
        ys.append(y)
    return carry, (jax.tree.map(lambda *a: jnp.stack(a), *ys) if ys else None)
