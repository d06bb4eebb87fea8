"""VQA: each record scored by its benchmark's own scorer (`answers.py`), named in the result.

  record "metric"  scorer (details["scorer"] names it)
  "vqa"            VQAv2: vqa_accuracy(scoring=the `scoring` option): "official" (default) =
                   GT-Vision-Lab/VQA vqaEval.py, "lmms_eval", "llava"
  "textvqa"        LLaVA's m4c_evaluator TextVQAAccuracyEvaluator
  "gqa"            LLaVA's convert_gqa_for_eval.py + GQA's eval.py ("exact_match" reads as "gqa")
  "vizwiz"         the VizWiz-VQA API's vqaEval.py (scoring="llava": LLaVA's conversion first);
                   details["unanswerable_f1"] as its evaluate_unanswerability
  "normalized"     the embedded set: no official scorer; both sides normalized (lmms-eval's rule)

Records without answers (test splits) are counted in details["unscored"], not scored. A
record's LLaVA question text (`"prompt"`) is asked verbatim by conversation templates;
pre-trained models get "Question: {q} Answer: " (docs/evaluation.md).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from .answers import (
    VQA_SCORINGS,
    gqa_accuracy,
    textvqa_accuracy,
    vizwiz_accuracy,
    vizwiz_unanswerable_f1,
    vqa_accuracy,
)
from .base import register
from .generative import COMMON_OPTIONS, GenerativeEvaluator

SCORERS = {
    ("vqa", "official"): "GT-Vision-Lab/VQA vqaEval.py (2021)",
    ("vqa", "lmms_eval"): "lmms-eval vqav2 process_results",
    ("vqa", "llava"): "LLaVA convert_vqav2_for_submission.py (EvalAIAnswerProcessor) + vqaEval.py (2021)",
    ("textvqa", None): "LLaVA eval_textvqa.py (m4c_evaluator TextVQAAccuracyEvaluator)",
    ("gqa", None): "LLaVA convert_gqa_for_eval.py + GQA eval.py",
    ("vizwiz", "official"): "VizWiz-VQA API vqaEval.py",
    ("vizwiz", "llava"): "LLaVA convert_vizwiz_for_submission.py (EvalAIAnswerProcessor) + VizWiz vqaEval.py",
    ("normalized", None): "VQA soft accuracy, both sides normalized (lmms-eval's rule, no official scorer)",
}
METRICS = ("vqa", "textvqa", "gqa", "vizwiz", "normalized")
NO_ANSWERS = ("none: the data has no answers (a test split: predictions only; the benchmark's server scores "
              "the upload, e.g. LLaVA's answers_upload/ files)")


def _vizwiz_scoring(scoring: str) -> str:
    return "llava" if scoring == "llava" else "official"  # VizWiz has no lmms-eval variant here


def record_score(record: dict, answer: str, scoring: str = "official") -> tuple[float, str]:
    """(score in [0, 1], the scorer's name) of one answer to one VQA record."""
    metric = record.get("metric") or "vqa"
    metric = "gqa" if metric == "exact_match" else metric
    if metric == "vqa":
        return vqa_accuracy(answer, record["answers"], scoring), SCORERS[("vqa", scoring)]
    if metric == "textvqa":
        return textvqa_accuracy(answer, record["answers"]), SCORERS[("textvqa", None)]
    if metric == "gqa":
        return gqa_accuracy(answer, record["answers"][0]), SCORERS[("gqa", None)]
    if metric == "vizwiz":
        scoring = _vizwiz_scoring(scoring)
        return vizwiz_accuracy(answer, record["answers"], scoring), SCORERS[("vizwiz", scoring)]
    if metric == "normalized":
        return vqa_accuracy(answer, record["answers"], "lmms_eval"), SCORERS[("normalized", None)]
    raise ValueError(f"VQA record {record.get('question_id')!r}: metric {metric!r} not in {METRICS}")


@register
class VQAEvaluator(GenerativeEvaluator):
    name = "vqa"
    task = "vqa"
    OPTIONS = {**COMMON_OPTIONS, "max_new_tokens": 16, "scoring": "official"}

    def check_options(self):
        super().check_options()
        if self.options["scoring"] not in VQA_SCORINGS:
            raise ValueError(f"evaluator 'vqa': scoring={self.options['scoring']!r} not in {VQA_SCORINGS}")

    def question(self, record, document):
        if document:
            return f"Question: {record['question'] + self.options['prompt_suffix']} Answer: "
        return self.llava_text(record)

    def example_answer(self, record):
        if not record["answers"]:
            raise ValueError(f"evaluator 'vqa': few-shot example {record['question_id']!r} has no answers "
                             "(a test split): give support_data= a split with answers")
        return Counter(record["answers"]).most_common(1)[0][0]

    def score(self, records, answers):
        per_kind = defaultdict(list)
        values, scorers, unscored = [], set(), 0
        for r, a in zip(records, answers):
            if r.get("balanced") is False:  # GQA's eval.py scores balanced questions only
                continue
            if not r["answers"]:  # a test split (VQAv2 test-dev, VizWiz test): its server scores it
                unscored += 1
                continue
            v, scorer = record_score(r, a, self.options["scoring"])
            values.append(v)
            scorers.add(scorer)
            per_kind[r.get("kind") or r.get("answer_type") or "all"].append(v)
        details = {"per_kind": {k: sum(v) / len(v) for k, v in sorted(per_kind.items())},
                   "scorer": "; ".join(sorted(scorers)) or NO_ANSWERS}
        if unscored:
            details["unscored"] = unscored
        vizwiz = [(a, r["answerable"]) for r, a in zip(records, answers)
                  if r.get("metric") == "vizwiz" and r.get("answerable") is not None]
        if vizwiz:
            details["unanswerable_f1"] = vizwiz_unanswerable_f1(
                [a for a, _ in vizwiz], [lab for _, lab in vizwiz], _vizwiz_scoring(self.options["scoring"]))
        if not values and unscored:
            return {}, details
        return {"accuracy": sum(values) / len(values) if values else 0.0}, details
