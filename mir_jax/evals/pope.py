"""POPE (object hallucination): yes/no accuracy, precision, recall, F1 and the yes-ratio, each
computed per category as LLaVA's eval_pope.py computes it (`scoring="official"`), the headline
being the mean over categories (LLaVA-1.5's POPE is the mean F1; why: docs/evaluation.md).
details["per_category"] has each category's scores, details["pooled"] one confusion matrix.
"""

from __future__ import annotations

from collections import defaultdict

from .answers import POPE_SCORINGS, pope_scores
from .base import register
from .generative import COMMON_OPTIONS, GenerativeEvaluator

METRICS = ("accuracy", "precision", "recall", "f1", "yes_ratio")
HEADLINE = "mean over categories of eval_pope.py's per-category scores (LLaVA-1.5's POPE: the mean F1)"


@register
class PopeEvaluator(GenerativeEvaluator):
    name = "pope"
    task = "pope"
    few_shot = False
    OPTIONS = {**COMMON_OPTIONS, "max_new_tokens": 8, "scoring": "official"}
    SCORERS = {"official": "LLaVA eval_pope.py per category, averaged over categories",
               "lenient": "eval_pope.py's rule, case-insensitive (no official scorer), averaged over categories"}

    def check_options(self):
        super().check_options()
        if self.options["scoring"] not in POPE_SCORINGS:
            raise ValueError(f"evaluator 'pope': scoring={self.options['scoring']!r} not in {POPE_SCORINGS}")

    def question(self, record, document):
        if document:
            return f"Question: {record['question'] + self.options['prompt_suffix']} Answer: "
        return self.llava_text(record)

    def score(self, records, answers):
        """({metric: the mean over categories}, {"per_category": {category: scores}, "pooled",
        "headline", "scorer"}); records without a category form the category "all"."""
        labels = [r["label"] for r in records]
        scoring = self.options["scoring"]
        groups = defaultdict(list)
        for i, r in enumerate(records):
            groups[r.get("category") or "all"].append(i)
        per_category = {c: pope_scores([answers[i] for i in idx], [labels[i] for i in idx], scoring)
                        for c, idx in sorted(groups.items())}
        # Each category counts once, whatever its size (LLaVA's random file has 2,910 lines, the others 3,000).
        scores = {k: sum(s[k] for s in per_category.values()) / len(per_category) for k in METRICS}
        details = {"per_category": per_category, "pooled": pope_scores(answers, labels, scoring),
                   "headline": HEADLINE, "scorer": self.SCORERS[scoring]}
        return scores, details
