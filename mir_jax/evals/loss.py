"""Held-out language-model loss and perplexity, under the evaluator interface.

`data` is a data config of `mir_jax.data.mixture` (its held-out split) or "embedded" (the
embedded MM1 mixture); the loss is the mean next-token cross-entropy over label tokens (no
z-loss), in float32.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh

from mir_jax.models.forward import IGNORE_INDEX, LOSS_INPUTS, forward, loss_sums

from .base import EvalResult, Evaluator, auto_batch_size, bind_model, register


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
    """Held-out loss (scores "loss", "perplexity", "tokens"). Options: data ("embedded" or a
    data config), num_samples, batch_size (0: picked for the mesh), seq_len (0: the model's
    context, at most 512), seed. In the training loop an entry that leaves them open reads the
    run's own held-out split (config.data, config.seed) in rows of config.seq_len."""

    name = "loss"
    split = "eval"
    auto_batch = True
    OPTIONS = {"data": "embedded", "num_samples": 256, "batch_size": 16, "seq_len": 0, "seed": 0}
    fixed: list[dict] | None = None  # the fixed batches, once prepared

    @classmethod
    def loop_options(cls, options, run_config):
        out = {"data": run_config.get("data"), "seed": int(run_config.seed), **options}
        out["seq_len"] = int(out.get("seq_len") or 0) or int(run_config.seq_len)
        return out

    def batches(self, model) -> list[dict]:
        """The held-out batches (host dicts of the pipeline's batch contract), every host's whole."""
        from mir_jax.data import make_eval_iterator

        o = self.options
        data = None if o["data"] in (None, "embedded") else o["data"]
        seq_len = int(o["seq_len"]) or min(model.context, 512)
        return list(make_eval_iterator(
            data, tokenizer=model.tokenizer, image_size=model.image.size, mean=model.image.mean,
            std=model.image.std, num_image_tokens=model.num_image_tokens,
            batch_size=auto_batch_size(o["batch_size"], model.mesh), seq_len=seq_len, seed=int(o["seed"]),
            num_samples=int(o["num_samples"])))

    def prepare(self, model) -> None:
        self.fixed = self.batches(model)
        if not any(np.any(np.asarray(b["labels"]) != IGNORE_INDEX) for b in self.fixed):
            raise ValueError("evaluator 'loss': the data has no label tokens")

    def run(self, model) -> EvalResult:
        batches = self.batches(model) if self.fixed is None else self.fixed
        ce, tokens = held_out_loss(model.model, batches, model.mesh)
        if not tokens:
            raise ValueError("evaluator 'loss': the data has no label tokens")
        loss = ce / tokens
        return self.result({"loss": loss, "perplexity": float(np.exp(loss)), "tokens": tokens})

    def metrics(self, result, key):
        # The loop's "eval" row as ever: {"loss", "tokens"} (another key: KEY, KEY_tokens).
        return {key: result.scores["loss"], "tokens" if key == "loss" else f"{key}_tokens": result.scores["tokens"]}

    def report(self, result, key):
        return f"{key}={result.scores['loss']:.4f}"
