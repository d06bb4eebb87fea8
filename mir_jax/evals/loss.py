"""Held-out language-model loss and perplexity, under the evaluator interface.

Data: `data` is a data config of `mir_jax.data.mixture` (its `sources`, read from their
held-out split; synthetic sources switch to "eval"), or "embedded" for the embedded MM1
mixture (captions, interleaved documents, text). Loss is the mean next-token cross-entropy
over label tokens (the training loss without z-loss), computed in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mir_jax.models.forward import LOSS_INPUTS, forward, loss_sums

from .base import EvalResult, Evaluator, bind_model, register


@functools.partial(jax.jit, static_argnums=0)
def _loss_sums(graphdef, state, batch):
    return loss_sums(forward(nnx.merge(graphdef, state), batch).logits, batch["labels"])


def held_out_loss(model, batches: Iterable[dict], mesh: Mesh | None = None) -> tuple[float, float]:
    """(summed cross-entropy, label-token count) of `model` over `batches` (host dicts of the
    pipeline's batch contract), on `mesh` if given (`base.bind_model`, multi-host safe); the
    training loop's held-out loss is this function on its fixed batches."""
    run = bind_model(model, mesh, _loss_sums, LOSS_INPUTS)
    ce = tokens = 0.0
    for batch in batches:
        sums = run(batch)
        ce, tokens = ce + float(sums["ce_sum"]), tokens + float(sums["tokens"])
    return ce, tokens


@register
class LossEvaluator(Evaluator):
    name = "loss"
    OPTIONS = {"data": "embedded", "num_samples": 256, "batch_size": 16, "seq_len": 0, "seed": 0}

    def run(self, model) -> EvalResult:
        from mir_jax.data import make_eval_iterator

        o = self.options
        data = None if o["data"] in (None, "embedded") else o["data"]
        seq_len = int(o["seq_len"]) or min(model.context, 512)
        batches = make_eval_iterator(
            data, tokenizer=model.tokenizer, image_size=model.image.size, mean=model.image.mean,
            std=model.image.std, num_image_tokens=model.num_image_tokens, batch_size=int(o["batch_size"]),
            seq_len=seq_len, seed=int(o["seed"]), num_samples=int(o["num_samples"]))
        ce, tokens = held_out_loss(model.model, batches, model.mesh)
        if not tokens:
            raise ValueError("evaluator 'loss': the data has no label tokens")
        loss = ce / tokens
        return self.result({"loss": loss, "perplexity": float(np.exp(loss)), "tokens": tokens})
