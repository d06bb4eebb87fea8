"""Captioning: CIDEr-D and BLEU-4 (METEOR where Java is present) with pycocoevalcap.

Conversation templates are asked `prompt`; pre-trained models get the image alone, as LLaVA's
stage 1 trains. max_new_tokens=None budgets the longest reference caption plus `CAPTION_SLACK`
tokens (docs/evaluation.md).
"""

from __future__ import annotations

from mir_jax.data.templates import CAPTION_PROMPT

from .base import register
from .caption_metrics import caption_scores
from .generative import COMMON_OPTIONS, GenerativeEvaluator

CAPTION_SLACK = 4


@register
class CaptionEvaluator(GenerativeEvaluator):
    name = "caption"
    task = "caption"
    OPTIONS = {**COMMON_OPTIONS, "max_new_tokens": None, "prompt": CAPTION_PROMPT,
               "metrics": ("bleu", "cider")}

    def max_new_tokens(self, model, records):
        if self.options["max_new_tokens"] is not None:
            return int(self.options["max_new_tokens"])
        encode = model.tokenizer.encode
        return max(len(encode(c)) for r in records for c in r["captions"]) + CAPTION_SLACK

    def question(self, record, document):
        return "" if document else self.options["prompt"] + self.options["prompt_suffix"]

    def example_answer(self, record):
        return record["captions"][0]

    def answer_prompt(self, record):
        return self.question(record, False)

    def score(self, records, answers):
        out = caption_scores({r["question_id"]: a for r, a in zip(records, answers)},
                             {r["question_id"]: list(r["captions"]) for r in records},
                             metrics=tuple(self.options["metrics"]))
        scores = {k: v for k, v in out.items() if isinstance(v, (int, float)) and k != "num_images"}
        details = {k: v for k, v in out.items() if k not in scores}
        details["scorer"] = f"pycocoevalcap Bleu, Cider (CIDEr-D), {details.get('tokenizer', 'ptb')} tokenizer"
        return scores, details
