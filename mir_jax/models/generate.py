"""Autoregressive generation with a KV cache: one jitted prefill, then the whole decoding loop
in one jitted `while_loop` on the device (the cache donated and updated in place, one slot a
step; no host round trip per token). The cache is head-major, [L, B, KVH, T, Dh]; on CPU the
decoding loop holds it as one buffer a layer (`per_layer_cache`).

Batched prompts must be LEFT-padded (as for HF `generate`), so every row's next token goes to the
same cache slot. Positions follow HF `generate`: the count of earlier real tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mir_jax.models.attention import Mask
from mir_jax.models.backend import on_cpu
from mir_jax.models.layers import default_positions
from mir_jax.models.llava import LlavaModel


def init_cache(model: LlavaModel, batch: int, length: int):
    """Zero KV cache (k, v), each [L, B, KVH, length, Dh] in the compute dtype: head-major, so a
    decoding step's one query streams each head's keys contiguously."""
    t = model.config.text
    shape = (t.num_layers, batch, t.num_kv_heads, length, t.head_dim)
    return tuple(jnp.zeros(shape, model.config.compute_dtype) for _ in "kv")  # two buffers (donated)


def per_layer_cache() -> bool:
    """Whether `generate`'s decoding loop keeps one cache buffer a layer (the layers unrolled):
    on XLA:CPU, where slicing a layer out of the stacked cache and weights inside the loop copies
    the slice every step. Accelerators keep the stacked cache and the layer scan."""
    return on_cpu()


@functools.partial(jax.jit, static_argnums=(0,), donate_argnums=(6,))
def _prefill(graphdef, state, input_ids, pixel_values, image_mask, key_valid, cache):
    model = nnx.merge(graphdef, state)
    b, s = input_ids.shape
    x, modality = model.embed_inputs(input_ids, pixel_values, image_mask)
    positions = default_positions(key_valid[:, :s], None, b, s)
    mask = Mask(causal=True, kv_valid=key_valid)  # query i (slot i) sees real slots <= i
    lm = model.language_model
    normed, _, cache = lm.decode(x, positions, mask, modality, cache=cache, cache_index=0)
    return lm.logits(normed[:, -1:])[:, 0], positions[:, -1], cache


def _step(model, tokens, positions, key_valid, cache, index, layers=None):
    """tokens, positions [B]; index: the cache slot being written (scalar); layers: per-layer
    modules for a per-layer cache (`LlamaModel.decode`)."""
    lm = model.language_model
    x = lm.embed(tokens[:, None])
    mask = Mask(causal=True, q_offset=index, kv_valid=key_valid)  # the query sits at slot `index`
    no_image = jnp.zeros(tokens.shape + (1,), bool)
    normed, _, cache = lm.decode(x, positions[:, None], mask, no_image, cache=cache, cache_index=index,
                               layers=layers)
    return lm.logits(normed)[:, 0], cache


def _argmax(logits):
    """jnp.argmax over the last axis as a max and a min (two plain reductions, which XLA:CPU
    vectorizes far better than its variadic argmax); a NaN row gives the last index.
    """
    top = jnp.max(logits, axis=-1, keepdims=True)
    index = jax.lax.broadcasted_iota(jnp.int32, logits.shape, logits.ndim - 1)
    last = logits.shape[-1] - 1
    return jnp.min(jnp.where(logits == top, index, last), axis=-1)


def _sample(logits, temperature: float, top_k: int | None, key):
    if temperature <= 0.0:
        return _argmax(logits)
    logits = logits / temperature
    if top_k:
        kth = jax.lax.top_k(logits, top_k)[0][:, -1:]
        logits = jnp.where(logits < kth, -jnp.inf, logits)
    return jax.random.categorical(key, logits, axis=-1).astype(jnp.int32)


def _decode_loop(per_layer: bool, graphdef, max_new_tokens: int, temperature: float, top_k, state, logits,
                 positions, key_valid, cache, start, eos, pad, rng):
    """The whole decoding loop on the device (one `while_loop`, no host round trip per token).
    Token 0 comes from the prompt's `logits`; step i feeds token i-1 (cache slot start + i - 1)
    and samples token i. Rows that emitted EOS get `pad` afterwards; the loop stops when every
    row is done. Returns (the new tokens [B, max_new_tokens], the final cache or None)."""
    model = nnx.merge(graphdef, state)
    b = logits.shape[0]
    layers = None
    if per_layer:  # split once, here, so that the loop body reads every layer's arrays in place
        cache = tuple(tuple(c[i] for i in range(c.shape[0])) for c in cache)
        layers = model.language_model.unstack_layers()
    rng, key = jax.random.split(rng)
    tok = _sample(logits, temperature, top_k, key)
    out = jnp.full((b, max_new_tokens), pad, jnp.int32).at[:, 0].set(tok)

    def cond(c):
        i, _, _, _, done, _, _ = c
        return (i < max_new_tokens) & ~jnp.all(done)

    def body(c):
        i, tok, pos, cache, done, out, rng = c
        logits, cache = _step(model, tok, pos + 1, key_valid, cache, start + i - 1, layers)
        rng, key = jax.random.split(rng)
        new = jnp.where(done, pad, _sample(logits, temperature, top_k, key))
        out = jax.lax.dynamic_update_slice(out, new[:, None], (0, i))
        return i + 1, new, pos + 1, cache, done | jnp.isin(new, eos), out, rng

    init = (jnp.int32(1), tok, positions, cache, jnp.isin(tok, eos), out, rng)
    final = jax.lax.while_loop(cond, body, init)
    # The stacked cache is returned (and dropped by the caller) so that its donated buffers alias
    # an output: the loop then updates them in place instead of copying them in first. The
    # per-layer buffers are new ones, made from the stack once (nothing to donate).
    return final[5], (None if per_layer else final[3])


_decode = {per_layer: jax.jit(functools.partial(_decode_loop, per_layer), static_argnums=(0, 1, 2, 3),
                              donate_argnums=() if per_layer else (8,))
           for per_layer in (False, True)}


def generate(model: LlavaModel, input_ids, pixel_values=None, image_mask=None, attention_mask=None, *,
             max_new_tokens: int, eos_token_id: int | list[int] | None = None, pad_token_id: int | None = None,
             temperature: float = 0.0, top_k: int | None = None, rng: jax.Array | None = None,
             mesh=None) -> np.ndarray:
    """Greedy (temperature 0) or temperature / top-k sampling.

    input_ids [B, S] left-padded, image tokens expanded; pixel_values [B, N, H, W, C];
    attention_mask [B, S]. Returns the new tokens [B, max_new_tokens] int32, `pad_token_id` after
    a row's EOS. With a `mesh`, rows and KV cache are split over its data axes (B must divide).
    """
    cfg = model.config
    eos = cfg.eos_token_id if eos_token_id is None else eos_token_id
    eos = np.atleast_1d(np.asarray([] if eos is None else eos, np.int32))
    pad = cfg.pad_token_id if pad_token_id is None else pad_token_id
    input_ids = np.asarray(input_ids, np.int32)
    b, s = input_ids.shape
    am = np.ones((b, s), bool) if attention_mask is None else np.asarray(attention_mask) != 0
    if np.any(am[:, :-1] & ~am[:, 1:]):
        raise ValueError("generate needs left padding: a row has padding after a real token")
    if temperature > 0 and rng is None:
        raise ValueError("sampling (temperature > 0) needs rng=")
    total = s + max_new_tokens
    key_valid = jnp.asarray(np.concatenate([am, np.ones((b, max_new_tokens), bool)], axis=1))
    graphdef, state = nnx.split(model)
    cache = init_cache(model, b, total)
    inputs = [jnp.asarray(input_ids), None if pixel_values is None else jnp.asarray(pixel_values),
              None if image_mask is None else jnp.asarray(image_mask), key_valid]
    if mesh is not None:
        from mir_jax import sharding

        state = jax.device_put(state, sharding.state_shardings(state, mesh))
        inputs = [None if x is None else jax.device_put(x, sharding.batch_sharding(mesh, x.ndim))
                  for x in inputs]
        key_valid = inputs[-1]
        cache = jax.device_put(cache, sharding.logical_sharding(mesh, (None, "batch", None, None, None)))
    logits, pos, cache = _prefill(graphdef, state, *inputs, cache)
    rng = jax.random.PRNGKey(0) if rng is None else rng
    decode = _decode[per_layer_cache()]
    out, _ = decode(graphdef, int(max_new_tokens), float(temperature), top_k, state, logits, pos,
                    key_valid, cache, jnp.int32(s), jnp.asarray(eos), jnp.int32(pad), rng)
    return np.asarray(out)
