"""VQA: VQAv2 accuracy (min(#humans who gave the answer / 3, 1), averaged over the 10
leave-one-out subsets) with the official answer normalization, or exact match for GQA-style
records (`"metric": "exact_match"`). Few-shot examples show the most common human answer.
Pre-trained models (plain/document templates) are asked "Question: {q} Answer: " (MM1's
few-shot layout); instruction-tuned ones the question itself (plus `prompt_suffix`).
"""

from __future__ import annotations

from collections import Counter, defaultdict

from .answers import exact_match, vqa_accuracy
from .base import register
from .generative import COMMON_OPTIONS, GenerativeEvaluator


@register
class VQAEvaluator(GenerativeEvaluator):
    name = "vqa"
    task = "vqa"
    OPTIONS = {**COMMON_OPTIONS, "max_new_tokens": 16}

    def question(self, record, document):
        q = record["question"] + self.options["prompt_suffix"]
        return f"Question: {q} Answer: " if document else q

    def example_answer(self, record):
        return Counter(record["answers"]).most_common(1)[0][0]

    def score(self, records, answers):
        per_kind = defaultdict(list)
        values = []
        for r, a in zip(records, answers):
            if r.get("metric") == "exact_match":
                v = exact_match(a, r["answers"][0])
            else:
                v = vqa_accuracy(a, r["answers"])
            values.append(v)
            per_kind[r.get("kind") or "all"].append(v)
        details = {"per_kind": {k: sum(v) / len(v) for k, v in sorted(per_kind.items())}}
        return {"accuracy": sum(values) / len(values)}, details
