"""Vision-to-language connectors, all [B, P, D_vis] -> [B, K, D_llm].

- linear: one projection per patch (LLaVA-1.0), K = P.
- mlp{n}x_gelu: n projections with GELU between (LLaVA-1.5's mlp2x_gelu), K = P.
- avgpool: MM1 average pooling of the patch grid to sqrt(K) x sqrt(K), then a projection.
- attnpool: MM1 attention pooling: K learned queries cross-attend to the patches, then a projection.
- c_abstractor: MM1 / Honeybee convolutional abstractor: residual conv blocks on the patch grid,
  adaptive average pooling to sqrt(K) x sqrt(K), residual conv blocks, MLP read-out.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mir_jax.models.config import ConnectorConfig
from mir_jax.models.layers import (
    Dense,
    LayerNorm,
    MultiHeadAttention,
    activation,
    lecun,
    normal,
    param,
)
from mir_jax.sharding import constrain

OUT = ("batch", "length", "act_embed")
# vision width -> LLM width. Both "vision_embed" and "embed" map to the fsdp mesh axis, and one
# array may use a mesh axis once, so the output side is named "mlp" (tensor-parallel).
PROJ = ("vision_embed", "mlp")


def adaptive_pool_matrix(n_in: int, n_out: int) -> np.ndarray:
    """[n_out, n_in] averaging weights of PyTorch's adaptive_avg_pool1d: bin i covers
    [floor(i*n_in/n_out), ceil((i+1)*n_in/n_out))."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool_grid(x: jax.Array, out: int) -> jax.Array:
    """x [B, G, G, C] -> [B, out, out, C] (separable, exact for any G, out)."""
    g = x.shape[1]
    m = jnp.asarray(adaptive_pool_matrix(g, out), x.dtype)
    return jnp.einsum("ih,jw,bhwc->bijc", m, m, x)


def _grid(x: jax.Array) -> jax.Array:
    b, p, c = x.shape
    g = math.isqrt(p)
    if g * g != p:
        raise ValueError(f"connector needs a square patch grid, got {p} tokens")
    return x.reshape(b, g, g, c)


class LinearConnector(nnx.Module):
    def __init__(self, d_vis, d_llm, cfg: ConnectorConfig, *, dtype, rngs):
        self.proj = Dense(d_vis, d_llm, PROJ, bias=cfg.bias, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        return self.proj(x)


class MLPConnector(nnx.Module):
    """linear_1, act, linear_2, act, ... (HF LlavaMultiModalProjector for n = 2)."""

    def __init__(self, d_vis, d_llm, cfg: ConnectorConfig, *, dtype, rngs):
        self.act = activation(cfg.hidden_act)
        layers = [Dense(d_vis, d_llm, PROJ, bias=cfg.bias, dtype=dtype, rngs=rngs)]
        for _ in range(cfg.mlp_depth - 1):
            layers.append(Dense(d_llm, d_llm, ("mlp", "embed"), bias=cfg.bias, dtype=dtype, rngs=rngs))
        self.layers = nnx.List(layers)

    def __call__(self, x):
        x = self.layers[0](x)
        for layer in self.layers[1:]:
            x = layer(self.act(x))
        return x


class AvgPoolConnector(nnx.Module):
    def __init__(self, d_vis, d_llm, cfg: ConnectorConfig, *, dtype, rngs):
        self.out = math.isqrt(cfg.num_tokens)
        self.proj = Dense(d_vis, d_llm, PROJ, bias=cfg.bias, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        pooled = adaptive_avg_pool_grid(_grid(x), self.out)
        return self.proj(pooled.reshape(x.shape[0], -1, x.shape[-1]))


class AttnPoolConnector(nnx.Module):
    """K learned queries attend (multi-head, with a pre-LayerNorm on the patches) to the
    patches; the K outputs are projected to the LLM width."""

    def __init__(self, d_vis, d_llm, cfg: ConnectorConfig, *, dtype, rngs, attention: str = "auto"):
        self.queries = param(rngs, normal(d_vis**-0.5), (cfg.num_tokens, d_vis), ("queries", "vision_embed"))
        self.norm = LayerNorm(d_vis, 1e-5, rngs=rngs)
        self.attn = MultiHeadAttention(d_vis, cfg.num_heads, dtype=dtype, rngs=rngs, attention=attention)
        self.proj = Dense(d_vis, d_llm, PROJ, bias=cfg.bias, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        q = jnp.broadcast_to(self.queries[...].astype(x.dtype), (x.shape[0], *self.queries.shape))
        return self.proj(self.attn(q, self.norm(x)))


class Conv2d(nnx.Module):
    """'SAME' convolution, NHWC, kernel [kh, kw, C_in, C_out]."""

    def __init__(self, c_in, c_out, size, *, dtype, rngs, init=None):
        self.dtype = dtype
        self.kernel = param(rngs, init or lecun((0, 1, 2)), (size, size, c_in, c_out),
                            ("conv_height", "conv_width", "channels", "vision_embed"))
        self.bias = param(rngs, lambda k, s, d: jnp.zeros(s, d), (c_out,), ("vision_embed",))

    def __call__(self, x):
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype), self.kernel[...].astype(self.dtype), (1, 1), "SAME",
            dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y + self.bias[...].astype(self.dtype)


class ResBlock(nnx.Module):
    """Bottleneck residual block (Honeybee's RegNet stage, without squeeze-excitation):
    x + conv1x1(silu(conv3x3(silu(conv1x1(LN(x))))))."""

    def __init__(self, c, *, dtype, rngs):
        self.norm = LayerNorm(c, 1e-6, rngs=rngs)
        self.reduce = Conv2d(c, c, 1, dtype=dtype, rngs=rngs)
        self.conv = Conv2d(c, c, 3, dtype=dtype, rngs=rngs)
        # Zero-init the last conv so every block starts as the identity (a stable start).
        self.expand = Conv2d(c, c, 1, dtype=dtype, rngs=rngs, init=lambda k, s, d: jnp.zeros(s, d))

    def __call__(self, x):
        h = jax.nn.silu(self.reduce(self.norm(x)))
        h = jax.nn.silu(self.conv(h))
        return x + self.expand(h)


class CAbstractor(nnx.Module):
    def __init__(self, d_vis, d_llm, cfg: ConnectorConfig, *, dtype, rngs):
        hidden = cfg.hidden_size or d_vis
        self.out = math.isqrt(cfg.num_tokens)
        self.stem = Dense(d_vis, hidden, ("vision_embed", "vision_mlp"), bias=True, dtype=dtype, rngs=rngs)
        self.pre = nnx.List([ResBlock(hidden, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
        self.post = nnx.List([ResBlock(hidden, dtype=dtype, rngs=rngs) for _ in range(cfg.depth)])
        self.readout1 = Dense(hidden, d_llm, ("vision_mlp", "embed"), bias=True, dtype=dtype, rngs=rngs)
        self.readout2 = Dense(d_llm, d_llm, ("mlp", "embed"), bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = self.stem(_grid(x))
        for blk in self.pre:
            h = blk(h)
        h = adaptive_avg_pool_grid(h, self.out)
        for blk in self.post:
            h = blk(h)
        h = h.reshape(x.shape[0], -1, h.shape[-1])
        return self.readout2(jax.nn.silu(self.readout1(h)))


CONNECTORS = {
    "linear": LinearConnector,
    "mlp": MLPConnector,
    "avgpool": AvgPoolConnector,
    "attnpool": AttnPoolConnector,
    "c_abstractor": CAbstractor,
}


class Connector(nnx.Module):
    """Dispatches on `cfg.kind`; input [B, P, D_vis] -> output [B, K, D_llm]. `attention` names
    the attention implementation of the connectors that attend (attnpool)."""

    def __init__(self, d_vis: int, d_llm: int, cfg: ConnectorConfig, *, dtype, rngs: nnx.Rngs,
                 attention: str = "auto"):
        self.kind = cfg.kind
        extra = {"attention": attention} if cfg.kind == "attnpool" else {}
        self.impl = CONNECTORS[cfg.kind](d_vis, d_llm, cfg, dtype=dtype, rngs=rngs, **extra)

    def __call__(self, x: jax.Array) -> jax.Array:
        return constrain(self.impl(x), OUT)
