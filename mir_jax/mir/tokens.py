"""Which hidden states MIR compares (docs/mir.md, section 2): the positions the image was
expanded into against every real position after the last of them. Pure jittable functions,
so an evaluator can reduce hidden states inside the compiled forward pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mir_token_masks(modality_mask: jax.Array, attention_mask: jax.Array | None = None):
    """Vision and text token masks for MIR.

    Args:
      modality_mask: [B, S] bool, True at image-token positions (LlavaOutput.modality_mask).
      attention_mask: optional [B, S], nonzero for real tokens (padding excluded).
    Returns:
      (vision_mask [B, S] bool, text_mask [B, S] bool).
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
    """Flattens per-layer hidden states into MIR rows, dropping the embedding layer.

    Args:
      hidden_states: [L+1, B, S, D] (HF layout: index 0 = input embeddings).
      vision_mask, text_mask: [B, S] bool from `mir_token_masks`.
    Returns:
      (rows [L, B*S, D], vision_rows_mask [B*S], text_rows_mask [B*S]): pass `rows` as
      both `vision` and `text` to MIRAccumulator.update / compute_mir with the masks.
    """
    layers = hidden_states[1:]
    rows = layers.reshape(layers.shape[0], -1, layers.shape[-1])
    return rows, vision_mask.reshape(-1), text_mask.reshape(-1)
