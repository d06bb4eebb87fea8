"""Evaluators: MIR, held-out loss, and the downstream benchmarks MIR is meant to predict.

One interface (`base.Evaluator`, picked by name from one registry) and one way to ask for
evaluations, a dict keyed by name ({KEY: {"every": K, "evaluator": NAME, **options}},
`base.build_evals`), serve the training loop (`config.evals`) and `evaluate.py` (which builds
the dict from its flags):

  name             module               scores
  mir              mir.py               mir (overall), lm_loss; per-layer FD in details
  loss             loss.py              loss, perplexity
  sample_captions  sample_captions.py   none: a few greedy captions to read
  caption          caption.py           cider (CIDEr-D), bleu_4, bleu_1..3 (meteor with Java)
  vqa              vqa.py               accuracy (VQAv2: vqaEval.py; TextVQA: LLaVA's m4c; GQA: its
                                        eval.py; VizWiz: its vqaEval.py; details["scorer"] names it)
  pope             pope.py              accuracy, precision, recall, f1, yes_ratio
  multiple_choice  multiple_choice.py   accuracy (letter parsed), likelihood_accuracy

Downstream data is the embedded benchmark (`benchmark.py`) unless a file is given
(`datasets.py` reads COCO/Karpathy captions, VQAv2, TextVQA, GQA, VizWiz, POPE, ScienceQA,
MMBench and a generic multiple-choice JSONL). Generation is batched greedy decoding with the KV cache
(`predict.py`, `mir_jax.models.generate`); prompts are the model's training template with the
answer left out (`prompts.py`); few-shot examples come from a support split (`fewshot.py`).

Stable names: `vqa_accuracy(prediction, answers, scoring="official") -> float`,
`normalize_answer(text) -> str`. Re-scoring answer files without a model: `rescore.py`; answer
files at LLaVA's `answers/` paths: `llava_answers.py`.
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
