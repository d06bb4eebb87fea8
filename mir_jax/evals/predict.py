"""Batched, jitted model calls for the downstream evaluators.

`generate_texts`: greedy (or sampled) answers with the KV cache, batches of similar-length
prompts left-padded to a multiple of `LENGTH_BUCKET`; `continuation_logprobs`: the summed
log-probability of a given continuation after each prompt (multiple choice by likelihood).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from mir_jax.data.images import load_and_preprocess, normalize
from mir_jax.models.generate import generate
from mir_jax.sharding import data_parallel_size

from .base import bind_model
from .prompts import Prompt, cut_at_stop

LENGTH_BUCKET = 16


def _pixels(model, prompts: list[Prompt]):
    """pixel_values float32 [B, N, H, W, 3] and image_mask [B, N] (N = most images in a row),
    or (None, None) when no prompt has an image."""
    n = max(len(p.images) for p in prompts)
    if n == 0:
        return None, None
    size = model.image.size
    raw = np.zeros((len(prompts), n, size, size, 3), np.uint8)
    mask = np.zeros((len(prompts), n), bool)
    for i, p in enumerate(prompts):
        for j, ref in enumerate(p.images):
            raw[i, j] = load_and_preprocess(ref, model.image)
            mask[i, j] = True
    return normalize(raw, model.image.mean, model.image.std), mask


def _batches(prompts: list[Prompt], batch_size: int):
    """(indices, rows) per batch, longest prompts first; the last batch padded with repeats."""
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i].ids))
    for s in range(0, len(order), batch_size):
        idx = order[s:s + batch_size]
        rows = idx + [idx[-1]] * (batch_size - len(idx))
        yield idx, [prompts[i] for i in rows]


def _bucketed(length: int) -> int:
    """`length` rounded up to a multiple of LENGTH_BUCKET (few distinct compiled shapes)."""
    return -(-length // LENGTH_BUCKET) * LENGTH_BUCKET


def _check_batch(model, batch_size: int) -> None:
    shards = data_parallel_size(model.mesh)
    if batch_size % shards:
        raise ValueError(f"batch_size={batch_size} does not split over the mesh's {shards} "
                         "data-parallel shards")


def generate_texts(model, prompts: list[Prompt], *, batch_size: int = 16, max_new_tokens: int = 32,
                   temperature: float = 0.0, seed: int = 0, progress: bool = False,
                   desc: str = "generate") -> list[str]:
    """The decoded answer to each prompt (cut at EOS and at the prompt's stop strings).

    model: an `EvalModel`; prompts: `Prompt`s from `prompts.encode` (without answers).
    A prompt plus `max_new_tokens` longer than the model's context is a one-line ValueError.
    """
    if not prompts:
        return []
    _check_batch(model, batch_size)
    tok = model.tokenizer
    longest = max(len(p.ids) for p in prompts)
    if longest + max_new_tokens > model.context:
        raise ValueError(f"the longest prompt has {longest} tokens: with max_new_tokens={max_new_tokens} "
                         f"it exceeds the model's context of {model.context} (fewer shots or a "
                         "smaller max_new_tokens)")
    rng = jax.random.PRNGKey(seed) if temperature > 0 else None
    out: list[str | None] = [None] * len(prompts)
    total = -(-len(prompts) // batch_size)
    for idx, rows in tqdm(_batches(prompts, batch_size), total=total, desc=desc, disable=not progress,
                          leave=False, unit="batch"):
        width = min(_bucketed(max(len(p.ids) for p in rows)), model.context - max_new_tokens)
        ids = np.full((batch_size, width), tok.pad_id, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        for i, p in enumerate(rows):
            ids[i, width - len(p.ids):] = p.ids
            mask[i, width - len(p.ids):] = 1
        pixels, image_mask = _pixels(model, rows)
        if rng is not None:
            rng, key = jax.random.split(rng)
        else:
            key = None
        new = generate(model.model, ids, pixels, image_mask, mask, max_new_tokens=max_new_tokens,
                       eos_token_id=tok.eos_id, pad_token_id=tok.pad_id, temperature=temperature,
                       rng=key, mesh=model.mesh)
        for i, row in zip(idx, new):
            row = list(row)
            if tok.eos_id in row:
                row = row[: row.index(tok.eos_id)]
            out[i] = cut_at_stop(tok.decode(row), prompts[i].stop)
    return out  # type: ignore[return-value]


@functools.partial(jax.jit, static_argnums=0)
def _answer_logprobs(graphdef, state, batch):
    """Per row: sum over target positions t of log p(input_ids[t] | tokens < t), and the count."""
    model = nnx.merge(graphdef, state)
    ids = batch["input_ids"]
    out = model(ids, batch["pixel_values"], batch["image_mask"], attention_mask=batch["attention_mask"])
    logp = jax.nn.log_softmax(out.logits[:, :-1].astype(jnp.float32), axis=-1)
    picked = jnp.take_along_axis(logp, ids[:, 1:, None], axis=-1)[..., 0]
    t = batch["target"][:, 1:]
    return jnp.sum(jnp.where(t, picked, 0.0), axis=1), jnp.sum(t, axis=1)


SCORE_INPUTS = ("input_ids", "pixel_values", "image_mask", "attention_mask", "target")


def continuation_logprobs(model, prompts: list[Prompt], *, batch_size: int = 16,
                          progress: bool = False, desc: str = "score") -> tuple[np.ndarray, np.ndarray]:
    """(sum of log-probabilities [n], token counts [n]) of each prompt's answer tokens
    ids[answer_start:answer_end] given everything before them (prompts from `encode` with
    `answer=`). Rows are right-padded; the model runs in its compute dtype, the log-softmax
    in float32; on the model's mesh if it has one (`base.bind_model`)."""
    n = len(prompts)
    sums, counts = np.zeros(n), np.zeros(n, np.int64)
    if not n:
        return sums, counts
    _check_batch(model, batch_size)
    run = bind_model(model.model, model.mesh, _answer_logprobs, SCORE_INPUTS)
    total = -(-n // batch_size)
    for idx, rows in tqdm(_batches(prompts, batch_size), total=total, desc=desc, disable=not progress,
                          leave=False, unit="batch"):
        width = _bucketed(max(len(p.ids) for p in rows))
        ids = np.full((batch_size, width), model.tokenizer.pad_id, np.int32)
        mask = np.zeros((batch_size, width), np.int32)
        target = np.zeros((batch_size, width), bool)
        for i, p in enumerate(rows):
            ids[i, :len(p.ids)], mask[i, :len(p.ids)] = p.ids, 1
            target[i, p.answer_start:p.answer_end] = True
        pixels, image_mask = _pixels(model, rows)
        s, c = jax.device_get(run({"input_ids": ids, "pixel_values": pixels, "image_mask": image_mask,
                                   "attention_mask": mask, "target": target}))
        sums[idx], counts[idx] = s[:len(idx)], c[:len(idx)]
    return sums, counts
