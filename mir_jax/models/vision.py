"""ViT image encoders: CLIP and SigLIP, as HF's CLIPVisionModel / SiglipVisionModel.

The two share the encoder layer (pre-LN attention + MLP, biases everywhere) and differ in the
stem: CLIP has a class token, no patch bias and a LayerNorm before the encoder ("pre_layrnorm");
SigLIP has no class token and a patch bias. Both keep a final LayerNorm ("post_layernorm") that
LLaVA never uses (it reads an intermediate hidden state), kept so checkpoints round-trip.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mir_jax.models.config import VisionConfig
from mir_jax.models.layers import (
    Dense,
    LayerNorm,
    MultiHeadAttention,
    activation,
    make_stack,
    normal,
    param,
    run_stack,
)
from mir_jax.sharding import constrain

ACT = ("batch", "length", "act_embed")


class VisionMLP(nnx.Module):
    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs):
        self.act = activation(cfg.hidden_act)
        self.fc1 = Dense(cfg.hidden_size, cfg.intermediate_size, ("vision_embed", "vision_mlp"),
                         bias=True, dtype=dtype, rngs=rngs)
        self.fc2 = Dense(cfg.intermediate_size, cfg.hidden_size, ("vision_mlp", "vision_embed"),
                         bias=True, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = self.act(self.fc1(x))
        return self.fc2(constrain(h, ("batch", "length", "act_mlp")))


class VisionLayer(nnx.Module):
    """x + attn(ln1(x)); x + mlp(ln2(x))."""

    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs, attention: str = "auto"):
        self.layer_norm1 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
        self.self_attn = MultiHeadAttention(cfg.hidden_size, cfg.num_heads, dtype=dtype, rngs=rngs,
                                            attention=attention)
        self.layer_norm2 = LayerNorm(cfg.hidden_size, cfg.layer_norm_eps, rngs=rngs)
        self.mlp = VisionMLP(cfg, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        x = x + self.self_attn(self.layer_norm1(x))
        x = x + self.mlp(self.layer_norm2(x))
        return constrain(x, ACT)


class VisionTower(nnx.Module):
    """pixel_values [B, H, W, C] (NHWC, normalized) -> selected hidden states.

    `hidden_states(pixels, layers)` returns the tower's hidden states at the requested indices
    of HF's L+1 list (0 = stem output, i = after layer i), running only as many layers as the
    deepest requested index needs.
    """

    def __init__(self, cfg: VisionConfig, *, dtype, rngs: nnx.Rngs, remat: str = "none",
                 scan_layers: bool = True, attention: str = "auto"):
        self.cfg = cfg
        self.dtype = dtype
        self.remat, self.scan_layers = remat, scan_layers
        d, p, c = cfg.hidden_size, cfg.patch_size, cfg.num_channels
        self.patch_embedding = Dense((p, p, c), d, ("patch", "patch", "channels", "vision_embed"),
                                     bias=cfg.kind == "siglip", dtype=dtype, rngs=rngs)
        n_pos = cfg.num_patches + (1 if cfg.kind == "clip" else 0)
        self.position_embedding = param(rngs, normal(0.02), (n_pos, d), ("positions", "vision_embed"))
        if cfg.kind == "clip":
            self.class_embedding = param(rngs, normal(d**-0.5), (d,), ("vision_embed",))
            self.pre_layrnorm = LayerNorm(d, cfg.layer_norm_eps, rngs=rngs)
        self.layers = make_stack(
            cfg.num_layers, lambda r: VisionLayer(cfg, dtype=dtype, rngs=r, attention=attention), rngs)
        self.post_layernorm = LayerNorm(d, cfg.layer_norm_eps, rngs=rngs)

    def embed(self, pixel_values: jax.Array) -> jax.Array:
        """[B, H, W, C] -> [B, T, D]; patches in row-major grid order (as HF's conv + flatten)."""
        cfg = self.cfg
        b, h, w, c = pixel_values.shape
        if (h, w, c) != (cfg.image_size, cfg.image_size, cfg.num_channels):
            raise ValueError(
                f"pixel_values of shape {pixel_values.shape} (NHWC) do not match the vision tower's "
                f"{cfg.image_size}x{cfg.image_size}x{cfg.num_channels}"
            )
        p, g = cfg.patch_size, cfg.grid
        x = pixel_values.reshape(b, g, p, g, p, c).transpose(0, 1, 3, 2, 4, 5).reshape(b, g * g, p, p, c)
        x = self.patch_embedding(x)  # a stride-p convolution is a matmul per patch
        if cfg.kind == "clip":
            cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, x.shape[-1]))
            x = jnp.concatenate([cls, x], axis=1)
        x = x + self.position_embedding[...].astype(x.dtype)
        if cfg.kind == "clip":
            x = self.pre_layrnorm(x)
        return constrain(x, ACT)

    def hidden_states(self, pixel_values: jax.Array, indices: tuple[int, ...]) -> list[jax.Array]:
        total = self.cfg.num_layers + 1
        idx = [i % total for i in indices]
        x = self.embed(pixel_values)
        depth = max(idx)
        if depth == 0:
            return [x for _ in idx]
        want_all = any(i not in (0, depth) for i in idx)

        def body(layer, h, _):
            h = layer(h)
            return h, (h if want_all else None)

        last, ys = run_stack(self.layers, body, x, n=depth, scan=self.scan_layers, remat=self.remat)
        out = []
        for i in idx:
            out.append(x if i == 0 else last if i == depth else ys[i - 1])
        return out

    def __call__(self, pixel_values: jax.Array) -> jax.Array:
        """Last hidden state after post_layernorm (the tower's own output; LLaVA does not use it)."""
        return self.post_layernorm(self.hidden_states(pixel_values, (-1,))[0])
