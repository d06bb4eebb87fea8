"""The one forward pass over a batch, and the next-token loss every caller computes from it.

A batch follows the data contract (`mir_jax.data.pipeline`): input_ids / labels / segment_ids /
positions [B, S] int32 (labels unshifted, `IGNORE_INDEX` where no loss applies),
pixel_values [B, M, H, W, 3] float32 and image_mask [B, M] bool. The train step, the held-out
loss, MIR and the dry run all feed the model through `forward`.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp

IGNORE_INDEX = -100  # label of a position without loss (HF's convention)

# The batch keys the model reads; `LOSS_INPUTS` adds the labels.
MODEL_INPUTS = ("input_ids", "pixel_values", "image_mask", "segment_ids", "positions")
LOSS_INPUTS = (*MODEL_INPUTS, "labels")


def forward(model, batch: Mapping, *, hidden_states: bool = False):
    """`model` (a `LlavaModel`) on `batch`; returns its `LlavaOutput` (logits [B, S, V], and
    hidden_states [L+1, B, S, D] when asked for)."""
    return model(batch["input_ids"], batch["pixel_values"], batch["image_mask"],
                 segment_ids=batch["segment_ids"], positions=batch["positions"],
                 output_hidden_states=hidden_states)


def token_losses(logits: jax.Array, labels: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Next-token cross entropy. logits [B, S, V], labels [B, S] unshifted.

    Position t predicts labels[t+1]; the last position predicts nothing. The labels are shifted
    rather than the logits, so the [B, S, V] array is never sliced (a copy in each direction).
    Returns (ce [B, S], log-partition [B, S], valid [B, S] float32 1/0), in float32.
    """
    targets = jnp.concatenate([labels[:, 1:], jnp.full_like(labels[:, :1], IGNORE_INDEX)], axis=1)
    valid = targets != IGNORE_INDEX
    logits = logits.astype(jnp.float32)
    lse = jax.nn.logsumexp(logits, axis=-1)
    picked = jnp.take_along_axis(logits, jnp.where(valid, targets, 0)[..., None], axis=-1)[..., 0]
    return (lse - picked), lse, valid.astype(jnp.float32)


def loss_sums(logits: jax.Array, labels: jax.Array, z_loss: float = 0.0) -> dict[str, jax.Array]:
    """{"ce_sum", "tokens", "z_sum"}: sums over valid tokens, divided by the global count only
    after every micro-batch and device is summed (a mean over the batch's tokens, not of means)."""
    ce, lse, valid = token_losses(logits, labels)
    out = {"ce_sum": jnp.sum(ce * valid), "tokens": jnp.sum(valid)}
    out["z_sum"] = jnp.sum(jnp.square(lse) * valid) if z_loss else jnp.zeros((), jnp.float32)
    return out
