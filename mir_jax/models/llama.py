"""Llama-family decoder: RMSNorm, rotary embeddings, SwiGLU, grouped-query attention, optional
qkv bias (Qwen2), tied embeddings, and MoCa after each layer when enabled. Layers are stacked
(`layers.run_stack`); the optional KV cache is head-major [L, B, KVH, T, Dh], written in place
at `cache_index`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mir_jax.models.attention import DECODE_MAX_QUERIES, cache_attention
from mir_jax.models.config import TextConfig
from mir_jax.models.layers import (
    Dense,
    RMSNorm,
    activation,
    apply_rope,
    attention,
    make_stack,
    normal,
    param,
    rope_cos_sin,
    run_stack,
    validate_implementation,
)
from mir_jax.models.moca import MoCa
from mir_jax.sharding import constrain

ACT = ("batch", "length", "act_embed")


class Attention(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs, attention: str = "auto"):
        d, h, kvh, hd = cfg.hidden_size, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
        self.attention_impl = validate_implementation(attention)
        self.q_proj = Dense(d, (h, hd), ("embed", "heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.k_proj = Dense(d, (kvh, hd), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.v_proj = Dense(d, (kvh, hd), ("embed", "kv_heads", "head_dim"), bias=cfg.qkv_bias, dtype=dtype, rngs=rngs)
        self.o_proj = Dense((h, hd), d, ("heads", "head_dim", "embed"), bias=cfg.o_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x, cos, sin, mask, cache=None, cache_index=None):
        q = apply_rope(self.q_proj(x), cos, sin)
        k = apply_rope(self.k_proj(x), cos, sin)
        v = self.v_proj(x)
        q = constrain(q, ("batch", "length", "act_heads", None))
        if cache is not None:
            # cache: the stacked (keys, values) [L, B, KVH, T, Dh] and this layer's index. The new
            # keys/values are written into the stack at (layer, cache_index) and attention reads
            # the layer's slice of it: with the stack in a loop carry XLA updates it in place, a
            # decoding step moving one slot (a per-layer copy would move the whole cache).
            ck, cv, layer_index = cache
            k, v = k.transpose(0, 2, 1, 3).astype(ck.dtype), v.transpose(0, 2, 1, 3).astype(cv.dtype)
            if layer_index is None:  # this layer's own buffers [B, KVH, T, Dh]
                ck = jax.lax.dynamic_update_slice(ck, k, (0, 0, cache_index, 0))
                cv = jax.lax.dynamic_update_slice(cv, v, (0, 0, cache_index, 0))
                cache, ck_l, cv_l = (ck, cv), ck, cv
            else:
                at = (layer_index, 0, 0, cache_index, 0)
                ck = jax.lax.dynamic_update_slice(ck, k[None], at)
                cv = jax.lax.dynamic_update_slice(cv, v[None], at)
                cache, ck_l, cv_l = (ck, cv), ck[layer_index], cv[layer_index]
            if q.shape[1] < DECODE_MAX_QUERIES:
                return self.o_proj(cache_attention(q, ck_l, cv_l, mask)), cache
            # A prompt (prefill): the model's attention over the slice, back in [B, T, KVH, Dh].
            k, v = ck_l.transpose(0, 2, 1, 3), cv_l.transpose(0, 2, 1, 3)
        out = attention(q, k.astype(q.dtype), v.astype(q.dtype), mask, implementation=self.attention_impl)
        return self.o_proj(out), cache


class MLP(nnx.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs):
        d, f = cfg.hidden_size, cfg.intermediate_size
        self.act = activation(cfg.hidden_act)
        self.gate_proj = Dense(d, f, ("embed", "mlp"), bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)
        self.up_proj = Dense(d, f, ("embed", "mlp"), bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)
        self.down_proj = Dense(f, d, ("mlp", "embed"), bias=cfg.mlp_bias, dtype=dtype, rngs=rngs)

    def __call__(self, x):
        h = self.act(self.gate_proj(x)) * self.up_proj(x)
        return self.down_proj(constrain(h, ("batch", "length", "act_mlp")))


class DecoderLayer(nnx.Module):
    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs, moca_std: float | None = None,
                 attention: str = "auto"):
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)
        self.self_attn = Attention(cfg, dtype=dtype, rngs=rngs, attention=attention)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)
        self.mlp = MLP(cfg, dtype=dtype, rngs=rngs)
        self.moca = MoCa(cfg.hidden_size, moca_std, rngs=rngs) if moca_std is not None else None

    def __call__(self, x, cos, sin, mask, modality_mask, cache=None, cache_index=None):
        """x [B, S, D] -> ([B, S, D], updated cache)."""
        h, cache = self.self_attn(self.input_layernorm(x), cos, sin, mask, cache, cache_index)
        x = x + h
        x = x + self.mlp(self.post_attention_layernorm(x))
        if self.moca is not None:
            x = self.moca(x, modality_mask)
        return constrain(x, ACT), cache


class LlamaModel(nnx.Module):
    """Token embedding, stacked decoder layers, final norm and LM head."""

    def __init__(self, cfg: TextConfig, *, dtype, rngs: nnx.Rngs, moca_std: float | None = None,
                 remat: str = "none", scan_layers: bool = True, attention: str = "auto"):
        self.cfg = cfg
        self.dtype = dtype
        self.remat, self.scan_layers = remat, scan_layers
        self.embed_tokens = param(rngs, normal(0.02), (cfg.vocab_size, cfg.hidden_size), ("vocab", "embed"))
        self.layers = make_stack(
            cfg.num_layers, lambda r: DecoderLayer(cfg, dtype=dtype, rngs=r, moca_std=moca_std, attention=attention), rngs)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps, rngs=rngs)
        if not cfg.tie_word_embeddings:
            self.lm_head = param(rngs, normal(0.02), (cfg.hidden_size, cfg.vocab_size), ("embed", "vocab"))

    def embed(self, ids: jax.Array) -> jax.Array:
        """ids [B, S] (must be in the vocabulary) -> [B, S, D] in the compute dtype."""
        x = jnp.take(self.embed_tokens[...], ids, axis=0, mode="clip").astype(self.dtype)
        return constrain(x, ACT)

    def logits(self, h: jax.Array) -> jax.Array:
        """h [B, S, D] (after the final norm) -> float32 logits [B, S, V]."""
        w = self.embed_tokens[...].T if self.cfg.tie_word_embeddings else self.lm_head[...]
        # One 2-D matmul over the merged (batch, length) rows, as `layers.Dense` does: XLA:CPU
        # runs the [B, S, D] x [D, V] dot_general markedly slower, forward and backward.
        out = jnp.matmul(h.reshape(-1, h.shape[-1]), w.astype(self.dtype), preferred_element_type=jnp.float32)
        return constrain(out.reshape(*h.shape[:-1], -1), ("batch", "length", "act_vocab"))

    def unstack_layers(self) -> list[DecoderLayer]:
        """The stacked decoder layers as one module a layer (parameters sliced out of the stack)."""
        graphdef, state = nnx.split(self.layers)
        return [nnx.merge(graphdef, jax.tree.map(lambda a, i=i: a[i], state)) for i in range(self.cfg.num_layers)]

    def decode(self, x, positions, mask, modality_mask, *, collect: bool = False,
               cache=None, cache_index=None, layers: list[DecoderLayer] | None = None):
        """Runs the decoder layers and the final norm.

        x [B, S, D] input embeddings; positions [B, S]; mask an `attention.Mask` (or bool [B, S, T]);
        modality_mask bool [B, S]. cache: None, or (keys, values) written at slot `cache_index`,
        stacked [L, B, KVH, T, Dh] (scanned) or tuples of L [B, KVH, T, Dh] (unrolled, with `layers`
        from `unstack_layers`). Returns (normed [B, S, D], per-layer outputs [L, B, S, D] or None,
        new cache).
        """
        cfg = self.cfg
        cos, sin = rope_cos_sin(positions, cfg.head_dim, cfg.rope_theta)
        if cache is None:
            def body(layer, h, _):
                h, _ = layer(h, cos, sin, mask, modality_mask)
                return h, (h if collect else None)

            last, ys = run_stack(self.layers, body, x, None, scan=self.scan_layers, remat=self.remat)
            return self.norm(last), ys, None

        if isinstance(cache[0], (tuple, list)):
            # One buffer a layer (`generate`'s decoding loop on CPU): the layers run unrolled and
            # each updates its own buffer in place, where slicing a layer out of the stacked
            # buffer would copy the slice on XLA:CPU every step.
            layers = self.unstack_layers() if layers is None else layers
            ck, cv, h, ys = list(cache[0]), list(cache[1]), x, []
            for i, layer in enumerate(layers):
                h, (ck[i], cv[i]) = layer(h, cos, sin, mask, modality_mask, (ck[i], cv[i], None), cache_index)
                ys.append(h)
            return self.norm(h), (jnp.stack(ys) if collect else None), (tuple(ck), tuple(cv))

        # The stacked cache rides in the scan's carry (as a scanned-over input/output XLA would
        # rebuild all of it every step); each layer writes its slot (Attention).
        def cached_body(layer, carry, _):
            h, ck, cv, i = carry
            h, (ck, cv) = layer(h, cos, sin, mask, modality_mask, (ck, cv, i), cache_index)
            return (h, ck, cv, i + 1), (h if collect else None)

        (last, ck, cv, _), ys = run_stack(self.layers, cached_body, (x, *cache, jnp.int32(0)), None,
                                          scan=self.scan_layers, cpu_unroll=False)
        return self.norm(last), ys, (ck, cv)
