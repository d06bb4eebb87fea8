"""MoCa, the MIR paper's Modality Calibration: after a decoder layer, vision-token positions get
h <- scale * h + shift with per-layer learnable vectors (scale ~ N(1, std), shift ~ N(0, std) at
init, so std = 0 starts as the identity); text positions are left untouched."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mir_jax.models.layers import normal, param


class MoCa(nnx.Module):
    def __init__(self, dim: int, std: float, *, rngs: nnx.Rngs):
        self.scale = param(rngs, normal(std, mean=1.0), (dim,), ("norm",))
        self.shift = param(rngs, normal(std), (dim,), ("norm",))

    def __call__(self, x: jax.Array, modality_mask: jax.Array) -> jax.Array:
        """x [B, S, D]; modality_mask bool [B, S] (True at vision tokens) -> [B, S, D]."""
        y = x * self.scale[...].astype(x.dtype) + self.shift[...].astype(x.dtype)
        return jnp.where(modality_mask[..., None], y, x)
