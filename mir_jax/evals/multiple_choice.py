"""Multiple choice (ScienceQA-IMG / MMBench / SEED style): lettered options, scored two ways.

"generate": the letter parsed from the generated text ("accuracy", "unparsed");
"likelihood": the most likely option text ("likelihood_accuracy", summed, and
"likelihood_accuracy_per_token"). scoring="official" reads ScienceQA records as LLaVA's
eval_science_qa.py does (plus "img_accuracy", LLaVA-1.5's SQA-IMG); other records, and all
under "lenient", with `parse_option_letter`. Answer files and prompts: docs/evaluation.md.
"""

from __future__ import annotations

import numpy as np

from mir_jax.data.synthetic import choice_prompt

from .answers import multiple_choice_scores, parse_option_letter, scienceqa_choice
from .base import EvalResult, answer_row, register
from .generative import COMMON_OPTIONS, GenerativeEvaluator, rendered
from .predict import continuation_logprobs
from .prompts import DOCUMENT_TEMPLATES, encode

MODES = ("both", "generate", "likelihood")
SCORINGS = ("official", "lenient")


@register
class MultipleChoiceEvaluator(GenerativeEvaluator):
    name = "multiple_choice"
    task = "multiple_choice"
    few_shot = False
    OPTIONS = {**COMMON_OPTIONS, "max_new_tokens": 8, "mode": "both", "scoring": "official"}

    def check_options(self):
        super().check_options()
        if self.options["mode"] not in MODES:
            raise ValueError(f"evaluator 'multiple_choice': mode={self.options['mode']!r} not in {MODES}")
        if self.options["scoring"] not in SCORINGS:
            raise ValueError(f"evaluator 'multiple_choice': scoring={self.options['scoring']!r} not in {SCORINGS}")

    def choose(self, record, text) -> tuple[int | None, str]:
        """(the option index a generation names or None, the scorer that read it)."""
        if self.options["scoring"] == "official" and record.get("benchmark") == "scienceqa":
            return scienceqa_choice(text, len(record["options"])), "LLaVA eval_science_qa.py"
        return parse_option_letter(text, len(record["options"])), "mir_jax parse_option_letter (no official scorer)"

    def answer_prompt(self, record):
        """The answer file's `prompt` as LLaVA's model_vqa_science.py / model_vqa_mmbench.py write
        it (ScienceQA's starts with "<image>\n" where the problem has an image)."""
        prompt = self.question(record, False)
        return "<image>\n" + prompt if record.get("benchmark") == "scienceqa" and record.get("image") else prompt

    def generation_scores(self, records, texts) -> tuple[list[int | None], dict, str]:
        """(the option each generation names, {"unparsed"} and, over the records with answers,
        "accuracy" plus "img_accuracy" (the ScienceQA problems with an image: eval_science_qa.py's
        IMG-Accuracy, LLaVA-1.5's SQA-IMG) where there are such problems, the scorers' names)."""
        picks = [self.choose(r, t) for t, r in zip(texts, records)]
        chosen = [c for c, _ in picks]
        scores = {"unparsed": sum(c is None for c in chosen)}
        scored = [i for i, r in enumerate(records) if r.get("answer") is not None]
        if scored:
            scores["accuracy"] = multiple_choice_scores([chosen[i] for i in scored],
                                                        [int(records[i]["answer"]) for i in scored])["accuracy"]
        img = [i for i in scored if records[i].get("benchmark") == "scienceqa" and records[i].get("image")]
        if img:
            scores["img_accuracy"] = multiple_choice_scores([chosen[i] for i in img],
                                                            [int(records[i]["answer"]) for i in img])["accuracy"]
        return chosen, scores, "; ".join(sorted({s for _, s in picks}))

    def _context(self, record) -> str:
        """The hint's line: MMBench's bare (model_vqa_mmbench.py: hint + "\n" + question), the
        others' as "Context: ..." (ScienceQA's, as lmms-eval renders LLaVA-1.5's prompt)."""
        if not record.get("hint"):
            return ""
        return f"{record['hint']}\n" if record.get("benchmark") == "mmbench" else f"Context: {record['hint']}\n"

    def question(self, record, document):
        q = self._context(record) + choice_prompt(record["question"], record["options"])
        q += self.options["prompt_suffix"]
        return f"Question: {q} Answer: " if document else q

    def run(self, model) -> EvalResult:
        o = self.options
        records = self.nonempty_records(model)
        # MMBench's test split has no answers: its answer file is scored by MMBench's server.
        scored = [n for n, r in enumerate(records) if r.get("answer") is not None]
        answers = np.asarray([int(records[n]["answer"]) for n in scored])
        scores, predictions, details = {"num_samples": len(records)}, [], {}
        if len(scored) < len(records):
            details["unscored"] = len(records) - len(scored)
        if o["mode"] in ("both", "generate"):
            prompts, texts = self.generate(model, records)
            chosen, generated, details["scorer"] = self.generation_scores(records, texts)
            scores.update(generated)
            predictions = [answer_row(r["question_id"], self.answer_prompt(r), t, model.name,
                                      choice=c, rendered_prompt=rendered(model, p))
                           for r, p, t, c in zip(records, prompts, texts, chosen)]
        if o["mode"] in ("both", "likelihood"):
            document = model.template in DOCUMENT_TEMPLATES
            pairs, owner = [], []
            for n, r in enumerate(records):
                q = self._context(r) + r["question"] + o["prompt_suffix"]
                q = f"Question: {q} Answer: " if document else q
                for option in r["options"]:
                    pairs.append(encode(model, q, r.get("image"), answer=str(option)))
                    owner.append(n)
            sums, counts = continuation_logprobs(model, pairs, batch_size=int(o["batch_size"]),
                                                 progress=bool(o["progress"]), desc=self.name + " (likelihood)")
            owner = np.asarray(owner)
            by_sum, by_token = [], []
            for n in range(len(records)):
                rows = np.nonzero(owner == n)[0]
                by_sum.append(int(np.argmax(sums[rows])))
                by_token.append(int(np.argmax(sums[rows] / np.maximum(counts[rows], 1))))
            if scored:
                scores["likelihood_accuracy"] = float(np.mean(np.asarray(by_sum)[scored] == answers))
                scores["likelihood_accuracy_per_token"] = float(np.mean(np.asarray(by_token)[scored] == answers))
            details["likelihood_choices"] = by_sum
        return self.result(scores, predictions, details)
