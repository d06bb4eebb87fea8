"""POPE (object hallucination): yes/no accuracy, precision, recall, F1 and the yes-ratio,
positives being "yes", each computed per category (random / popular / adversarial) as LLaVA's
eval_pope.py computes it (`scoring="official"`, the default; "lenient" reads "NO"/"Not" as no).

The headline scores are the mean over the categories of those per-category scores: LLaVA-1.5's
reported POPE (85.9 for llava-v1.5-7b and -13b, docs/MODEL_ZOO.md) is the mean of eval_pope.py's
three per-category F1 scores. Neither the paper nor LLaVA's docs say so (haotian-liu/LLaVA issue
#806 asks and has no maintainer answer); users reproduced it that way (issue #626: (0.8718 +
0.8629 + 0.8450) / 3 = 0.8599 for 13B; shikiw/OPERA #33 for 7B: 0.8598), and later LLaVA-based
papers average the three F1 (or accuracies) the same way. details["per_category"] has each
category's scores, details["pooled"] one confusion matrix over all records (how lmms-eval's pope
task aggregates its 9,000 questions, with its own parsing: an exact "yes"/"no"). With one
category (or none) the mean is the pooled score.

Prompt: LLaVA-1.5's, "Is there a ... in the image?\nAnswer the question using a single word or
phrase." (the record's `"prompt"`) for conversation templates; "Question: {q} Answer: " for
pre-trained models.
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
