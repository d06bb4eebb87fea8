"""A few greedy captions to read, no score: the first `num_samples` images of the embedded
benchmark, captioned as the caption evaluator prompts them; the training loop prints them
("target:", "generated:"). batch_size 0 rounds the samples up to the data-parallel shards.
"""

from __future__ import annotations

from mir_jax.sharding import data_parallel_size

from .base import EvalModel, EvalResult, Evaluator, answer_row, get_evaluator, register


@register
class SampleCaptionsEvaluator(Evaluator):
    name = "sample_captions"
    auto_batch = True
    OPTIONS = {"num_samples": 3, "batch_size": 0, "max_new_tokens": None, "seed": 0}
    fixed: list[dict] | None = None  # the fixed records, once prepared

    def _caption(self, model: EvalModel):
        n, shards = int(self.options["num_samples"]), data_parallel_size(model.mesh)
        return get_evaluator("caption", num_samples=n, max_new_tokens=self.options["max_new_tokens"],
                             seed=int(self.options["seed"]),
                             batch_size=int(self.options["batch_size"]) or shards * -(-n // shards))

    def prepare(self, model: EvalModel) -> None:
        self.fixed = self._caption(model).nonempty_records(model)

    def run(self, model: EvalModel) -> EvalResult:
        caption = self._caption(model)
        records = self.fixed if self.fixed is not None else caption.nonempty_records(model)
        _, texts = caption.generate(model, records)
        pairs = [(r["captions"][0], t) for r, t in zip(records, texts)]
        predictions = [answer_row(r["question_id"], caption.answer_prompt(r), t, model.name, target=target)
                       for r, (target, t) in zip(records, pairs)]
        return self.result({}, predictions, {"captions": pairs})

    def report(self, result: EvalResult, key: str) -> str:
        return "\n".join(f"  target:    {target}\n  generated: {got}" for target, got in result.details["captions"])
