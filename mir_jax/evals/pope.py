"""POPE (object hallucination): yes/no accuracy, precision, recall, F1 and the yes-ratio,
positives being "yes", per category as well (random / popular / adversarial), equal to
LLaVA's eval_pope.py (`scoring="official"`, the default; "lenient" reads "NO"/"Not" as no).

Prompt: LLaVA-1.5's, "Is there a ... in the image?\nAnswer the question using a single word or
phrase." (the record's `"prompt"`) for conversation templates; "Question: {q} Answer: " for
pre-trained models.
"""

from __future__ import annotations

from collections import defaultdict

from .answers import POPE_SCORINGS, pope_scores
from .base import register
from .generative import COMMON_OPTIONS, GenerativeEvaluator


@register
class PopeEvaluator(GenerativeEvaluator):
    name = "pope"
    task = "pope"
    few_shot = False
    OPTIONS = {**COMMON_OPTIONS, "max_new_tokens": 8, "scoring": "official"}
    SCORERS = {"official": "LLaVA eval_pope.py", "lenient": "eval_pope.py's rule, case-insensitive (no official scorer)"}

    def check_options(self):
        super().check_options()
        if self.options["scoring"] not in POPE_SCORINGS:
            raise ValueError(f"evaluator 'pope': scoring={self.options['scoring']!r} not in {POPE_SCORINGS}")

    def question(self, record, document):
        if document:
            return f"Question: {record['question'] + self.options['prompt_suffix']} Answer: "
        return self.llava_text(record)

    def score(self, records, answers):
        labels = [r["label"] for r in records]
        scoring = self.options["scoring"]
        scores = pope_scores(answers, labels, scoring)
        groups = defaultdict(list)
        for i, r in enumerate(records):
            groups[r.get("category") or "all"].append(i)
        details = {"per_category": {c: pope_scores([answers[i] for i in idx], [labels[i] for i in idx], scoring)
                                    for c, idx in sorted(groups.items())},
                   "scorer": self.SCORERS[scoring]}
        return {k: v for k, v in scores.items() if k != "num_samples"}, details
