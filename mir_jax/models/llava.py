"""LLaVA composition: vision tower -> connector -> image tokens spliced into the LLM input.

Batch conventions (what the data pipeline produces):
  input_ids      [B, S] int32, each image already expanded into K consecutive image_token_id;
  pixel_values   [B, N, H, W, C] float32 NHWC, normalized; N image slots per row;
  image_mask     [B, N] bool, real images in the first slots of each row;
  attention_mask [B, S] (1 real, 0 pad) or segment_ids [B, S] (0 pad, 1..n packed examples),
  positions      [B, S] (default: count of earlier real tokens, restarting per segment).
The k-th run of K image tokens in a row receives the k-th image slot of that row.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx, struct

from mir_jax.models.config import LlavaConfig
from mir_jax.models.connectors import Connector
from mir_jax.models.layers import default_positions, text_mask
from mir_jax.models.llama import LlamaModel
from mir_jax.models.vision import VisionTower
from mir_jax.sharding import constrain


@struct.dataclass
class LlavaOutput:
    """logits [B, S, V] float32; hidden_states [L+1, B, S, D] (0 = input embeddings, i = after
    decoder layer i, L = after the final norm; HF's layout) or None; modality_mask [B, S] bool."""

    logits: jax.Array
    hidden_states: jax.Array | None
    modality_mask: jax.Array


class LlavaModel(nnx.Module):
    def __init__(self, config: LlavaConfig, *, rngs: nnx.Rngs):
        if isinstance(config, dict):
            config = LlavaConfig.from_dict(config)
        self.config = config
        dtype = config.compute_dtype
        self.vision_tower = VisionTower(config.vision, dtype=dtype, rngs=rngs, remat=config.remat,
                                        scan_layers=config.scan_layers, attention=config.attention)
        d_vis = config.vision.hidden_size * len(config.feature_layers)
        self.connector = Connector(d_vis, config.text.hidden_size, config.connector, dtype=dtype, rngs=rngs,
                                   attention=config.attention)
        self.language_model = LlamaModel(
            config.text, dtype=dtype, rngs=rngs, moca_std=config.moca_std if config.moca else None,
            remat=config.remat, scan_layers=config.scan_layers, attention=config.attention)

    # ------------------------------------------------------------------------------------------
    def image_features(self, pixel_values: jax.Array) -> jax.Array:
        """[N, H, W, C] -> [N, K, D_llm]: selected vision hidden states through the connector."""
        cfg = self.config
        hs = self.vision_tower.hidden_states(pixel_values, cfg.feature_layers)
        if cfg.vision_feature_select_strategy == "default":
            hs = [h[:, 1:] for h in hs]
        feats = hs[0] if len(hs) == 1 else jnp.concatenate(hs, axis=-1)
        return self.connector(feats)

    def embed_inputs(self, input_ids, pixel_values=None, image_mask=None):
        """Token embeddings with image features spliced in. Returns (x [B, S, D], modality_mask)."""
        cfg = self.config
        is_img = input_ids == cfg.image_token_id
        # The placeholder id may lie outside the vocabulary (original LLaVA uses -200).
        x = self.language_model.embed(jnp.where(is_img, 0, input_ids))
        if pixel_values is None:
            return x, is_img
        if pixel_values.ndim != 5:
            raise ValueError(f"pixel_values must be [B, n_images, H, W, C], got {pixel_values.shape}")
        b, n = pixel_values.shape[:2]
        if b != input_ids.shape[0]:
            raise ValueError(f"pixel_values batch {b} != input_ids batch {input_ids.shape[0]}")
        k = cfg.num_image_tokens
        _check_image_tokens(input_ids, image_mask, cfg.image_token_id, k, n)
        feats = self.image_features(pixel_values.reshape(b * n, *pixel_values.shape[2:]))
        feats = feats.reshape(b, n, k, -1)
        rank = jnp.cumsum(is_img, axis=1) - 1  # index of each image token among its row's
        img = jnp.clip(rank // k, 0, n - 1)
        tok = jnp.clip(rank % k, 0, k - 1)
        gathered = feats[jnp.arange(b)[:, None], img, tok]
        x = jnp.where(is_img[..., None], gathered.astype(x.dtype), x)
        return constrain(x, ("batch", "length", "act_embed")), is_img

    def __call__(self, input_ids, pixel_values=None, image_mask=None, attention_mask=None,
                 segment_ids=None, positions=None, *, output_hidden_states: bool = False) -> LlavaOutput:
        b, s = input_ids.shape
        x, modality = self.embed_inputs(input_ids, pixel_values, image_mask)
        if positions is None:
            positions = default_positions(attention_mask, segment_ids, b, s)
        mask = text_mask(attention_mask, segment_ids)  # described, never [S, S] unless a path needs it
        lm = self.language_model
        normed, ys, _ = lm.decode(x, positions, mask, modality, collect=output_hidden_states)
        hidden = None
        if output_hidden_states:
            hidden = jnp.concatenate([x[None], ys[:-1], normed[None]], axis=0)
        return LlavaOutput(logits=lm.logits(normed), hidden_states=hidden, modality_mask=modality)


def _check_image_tokens(input_ids, image_mask, image_token_id: int, k: int, n_slots: int) -> None:
    """Host-side check (skipped under jit) that every row has K image tokens per real image."""
    if isinstance(input_ids, jax.core.Tracer) or isinstance(image_mask, jax.core.Tracer):
        return
    counts = (np.asarray(input_ids) == image_token_id).sum(1)  # numpy: nothing gets staged
    if np.any(counts % k):
        raise ValueError(f"image token counts per row {counts.tolist()} are not multiples of K={k}; "
                         "expand placeholders with expand_image_tokens()")
    n_img = counts // k
    if np.any(n_img > n_slots):
        raise ValueError(f"rows hold {n_img.tolist()} images but pixel_values has {n_slots} slots")
    if image_mask is not None:
        real = np.asarray(image_mask).sum(1)
        if np.any(real != n_img):
            raise ValueError(f"image_mask marks {real.tolist()} images per row, input_ids hold {n_img.tolist()}")


def expand_image_tokens(input_ids, image_token_id: int, num_image_tokens: int, *,
                        pad_token_id: int = 0, attention_mask=None, max_length: int | None = None):
    """Host-side: every single `image_token_id` becomes `num_image_tokens` of them (what HF's
    LLaVA processor does). input_ids: [B, S] array or a list of 1-D sequences.

    Returns (ids [B, S'] int32, attention_mask [B, S'] int32), right-padded with `pad_token_id`
    to the longest row (or `max_length`, raising if a row does not fit). Padding in the input
    (attention_mask 0) is dropped first.
    """
    rows = [np.asarray(r) for r in input_ids]
    if attention_mask is not None:
        rows = [r[np.asarray(m) != 0] for r, m in zip(rows, attention_mask)]
    out = []
    for r in rows:
        pieces = [np.full(num_image_tokens, image_token_id, r.dtype) if t == image_token_id else np.array([t], r.dtype)
                  for t in r]
        out.append(np.concatenate(pieces) if pieces else np.zeros(0, np.int32))
    length = max((len(r) for r in out), default=0) if max_length is None else max_length
    ids = np.full((len(out), length), pad_token_id, np.int32)
    mask = np.zeros((len(out), length), np.int32)
    for i, r in enumerate(out):
        if len(r) > length:
            raise ValueError(f"row {i} has {len(r)} tokens after expansion > max_length {length}")
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return ids, mask


def flops_per_token(config: LlavaConfig, seq_len: int, *, training: bool = True) -> float:
    """Language-model FLOPs per token (matmuls only, 2 per multiply-add; x3 for training):
    the dense weights plus attention scores/values over `seq_len` (causal halving ignored, as in
    PaLM's MFU)."""
    t = config.text
    d, hd = t.hidden_size, t.head_dim
    per_layer = (d * hd * (t.num_heads + 2 * t.num_kv_heads) + t.num_heads * hd * d
                 + 3 * d * t.intermediate_size)
    dense = t.num_layers * per_layer + d * t.vocab_size
    attn = t.num_layers * 2 * t.num_heads * hd * seq_len
    return (3 if training else 1) * 2 * (dense + attn)


def image_flops(config: LlavaConfig, *, training: bool = True) -> float:
    """Vision tower + connector FLOPs for one image (same conventions as `flops_per_token`;
    the pooling connectors are counted as their projections only)."""
    v = config.vision
    n = v.num_patches + (1 if v.kind == "clip" else 0)
    d = v.hidden_size
    per_layer = n * (4 * d * d + 2 * d * v.intermediate_size) + 2 * n * n * d
    layers = max(i % (v.num_layers + 1) for i in config.feature_layers)
    patch = v.num_patches * v.patch_size**2 * v.num_channels * d
    k = config.num_image_tokens
    d_in = d * len(config.feature_layers)
    dl = config.text.hidden_size
    conn = k * d_in * dl + (k * dl * dl * (config.connector.mlp_depth - 1) if config.connector.kind == "mlp" else 0)
    return (3 if training else 1) * 2 * (layers * per_layer + patch + conn)


def with_compute_dtype(model: LlavaModel, dtype: str) -> LlavaModel:
    """The same model (its float32 parameters, shared, not copied) computing in `dtype`
    ("float32", "bfloat16", "float16"): activations and matmuls in that dtype; norms and
    softmax accumulate in float32 as in HF's half-precision models."""
    if dtype == model.config.dtype:
        return model
    config = dataclasses.replace(model.config, dtype=dtype)
    target = nnx.eval_shape(lambda: LlavaModel(config, rngs=nnx.Rngs(0)))
    nnx.update(target, nnx.state(model))
    return target
