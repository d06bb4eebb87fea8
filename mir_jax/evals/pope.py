"""POPE (object hallucination): yes/no accuracy, precision, recall, F1 and the yes-ratio,
positives being "yes", the answer parsed as POPE's own script does; per category as well
(random / popular / adversarial)."""

from __future__ import annotations

from collections import defaultdict

from .answers import pope_scores
from .base import register
from .generative import COMMON_OPTIONS, GenerativeEvaluator


@register
class PopeEvaluator(GenerativeEvaluator):
    name = "pope"
    task = "pope"
    few_shot = False
    OPTIONS = {**COMMON_OPTIONS, "max_new_tokens": 8}

    def question(self, record, document):
        q = record["question"] + self.options["prompt_suffix"]
        return f"Question: {q} Answer: " if document else q

    def score(self, records, answers):
        labels = [r["label"] for r in records]
        scores = pope_scores(answers, labels)
        groups = defaultdict(list)
        for i, r in enumerate(records):
            groups[r.get("category") or "all"].append(i)
        details = {"per_category": {c: pope_scores([answers[i] for i in idx], [labels[i] for i in idx])
                                    for c, idx in sorted(groups.items())}}
        return {k: v for k, v in scores.items() if k != "num_samples"}, details
