"""Evaluators: MIR, held-out loss, and the downstream benchmarks MIR is meant to predict.

One registry (`base.get_evaluator`) and one dict form of evaluations (`base.build_evals`)
serve the training loop (`config.evals`) and `evaluate.py`. Evaluators: `mir.py`, `loss.py`,
`sample_captions.py`, `caption.py`, `vqa.py`, `pope.py`, `multiple_choice.py`; scorers in
`answers.py` and `caption_metrics.py`; data in `benchmark.py` (embedded) and `datasets.py`
(benchmark files); generation in `predict.py`, prompts in `prompts.py`, few-shot draws in
`fewshot.py`; `rescore.py` re-scores answer files, `llava_answers.py` writes them at LLaVA's
paths. What each computes and which official scorer it matches: docs/evaluation.md.

Stable names: `vqa_accuracy(prediction, answers, scoring="official") -> float`,
`normalize_answer(text) -> str`.
"""

from . import caption, loss, mir, multiple_choice, pope, sample_captions, vqa  # noqa: F401  (register evaluators)
from .answers import exact_match, normalize_answer, parse_option_letter, pope_scores, vqa_accuracy
from .base import (
    REGISTRY,
    EvalModel,
    EvalResult,
    Evaluator,
    build_evals,
    get_evaluator,
    register,
    write_result,
)
from .mir import MIREvaluation, evaluate_mir, plot_per_layer

DOWNSTREAM = ("caption", "vqa", "pope", "multiple_choice")
ALL = ("mir", "loss", *DOWNSTREAM)

__all__ = [
    "ALL", "DOWNSTREAM", "REGISTRY", "EvalModel", "EvalResult", "Evaluator", "MIREvaluation",
    "build_evals", "evaluate_mir", "exact_match", "get_evaluator", "normalize_answer", "parse_option_letter",
    "plot_per_layer", "pope_scores", "register", "vqa_accuracy", "write_result",
]
