"""Which hidden states MIR compares (docs/mir.md, section 2): the positions the image was
expanded into against every real position after the last of them. Pure jittable functions,
so an evaluator can reduce hidden states inside the compiled forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mir_token_masks(modality_mask: jax.Array, attention_mask: jax.Array | None = None):
    """(vision_mask, text_mask) [B, S] bool from modality_mask [B, S] (True at image tokens) and
    an optional attention_mask [B, S] (nonzero for real tokens).
    """
    modality_mask = jnp.asarray(modality_mask, bool)
    valid = jnp.ones_like(modality_mask) if attention_mask is None else jnp.asarray(attention_mask) != 0
    positions = jnp.arange(modality_mask.shape[-1])
    # Index of the last image token per row (-1 when the row has no image).
    last_image = jnp.max(jnp.where(modality_mask, positions, -1), axis=-1, keepdims=True)
    has_image = last_image >= 0
    text_mask = valid & has_image & (positions > last_image) & ~modality_mask
    vision_mask = valid & modality_mask
    return vision_mask, text_mask


def mir_rows(hidden_states: jax.Array, vision_mask: jax.Array, text_mask: jax.Array):
    """Per-layer hidden states [L+1, B, S, D] (index 0 = embeddings, dropped) as MIR rows.

    Returns (rows [L, B*S, D], vision_rows_mask [B*S], text_rows_mask [B*S]): pass `rows` as both
    `vision` and `text` to compute_mir / MIRAccumulator.update with the masks.
    """
    layers = hidden_states[1:]
    rows = layers.reshape(layers.shape[0], -1, layers.shape[-1])
    return rows, vision_mask.reshape(-1), text_mask.reshape(-1)
