"""The part every answer-generating evaluator shares: data, few-shot prompts, generation,
the answer file. Subclasses say how a record becomes a question and an example answer, and
how answers are scored (`caption.py`, `vqa.py`, `pope.py`, `multiple_choice.py`).

Options common to all of them:
  data            "embedded" (`benchmark.py`) or {"format": NAME, **paths} for `datasets.load_task`
  support_data    few-shot examples' source (same forms; default: the embedded support split
                  for embedded data, else the evaluated set itself, never the query)
  num_samples     how many records (the first N); batch_size; max_new_tokens
  shots           in-context examples per query (MM1: 0, 4, 8); seed: their draw
  prompt_suffix   appended to each question that has no LLaVA text of its own
  llava_prompt    True: ask a file's record LLaVA-1.5's question text (`"prompt"`); False:
                  question + suffix
  progress        a progress bar per evaluation
  scene           embedded data only: "image", "text" or "blank" (`benchmark.embedded_task`)
"""

from __future__ import annotations

from .base import EvalModel, EvalResult, Evaluator, answer_row
from .fewshot import select_examples
from .predict import generate_texts
from .prompts import DOCUMENT_TEMPLATES, Prompt, encode

COMMON_OPTIONS = {"data": "embedded", "support_data": None, "num_samples": 100, "batch_size": 16,
                  "max_new_tokens": 16, "shots": 0, "seed": 0, "prompt_suffix": "",
                  "llava_prompt": True, "progress": False, "support_samples": 64, "scene": "image"}


def load_records(data, task: str, num_samples: int | None, image_size: int, *, support: bool = False,
                 seed: int = 0, scene: str = "image") -> list[dict]:
    """Task records from the embedded benchmark or a benchmark file (see the module docstring)."""
    if data in (None, "embedded"):
        from .benchmark import embedded_task

        return embedded_task(task, num_samples or 100, image_size=image_size, seed=seed, support=support,
                             scene=scene)
    if not isinstance(data, dict) or "format" not in data:
        raise ValueError(f"{task} data must be 'embedded' or a dict with a 'format' key, got {data!r}")
    if scene != "image":
        raise ValueError(f"{task}: scene={scene!r} needs the embedded benchmark (its scenes are known)")
    from .datasets import TASK_KINDS, load_task

    spec = dict(data)
    fmt = spec.pop("format")
    if TASK_KINDS.get(fmt, task) != task:
        raise ValueError(f"{task} data: format {fmt!r} holds {TASK_KINDS[fmt]} records; formats for "
                         f"{task}: {sorted(k for k, v in TASK_KINDS.items() if v == task)}")
    return load_task(fmt, limit=num_samples, **spec)


class GenerativeEvaluator(Evaluator):
    """Generates an answer per record and scores the answers (see the module docstring)."""

    task = ""  # the record type this evaluator reads (benchmark.TASKS)
    few_shot = True

    def check_options(self) -> None:
        super().check_options()
        if int(self.options["shots"]) < 0 or (self.options["shots"] and not self.few_shot):
            raise ValueError(f"evaluator {self.name!r}: shots={self.options['shots']} "
                             + ("must be >= 0" if self.few_shot else "is not supported (0 only)"))

    # ----- what subclasses define --------------------------------------------------------------
    def question(self, record: dict, document: bool) -> str:
        """The query text of a record (document: the layout of pre-trained models)."""
        raise NotImplementedError

    def example_answer(self, record: dict) -> str:
        """The answer a few-shot example shows."""
        raise NotImplementedError

    def score(self, records: list[dict], answers: list[str]) -> tuple[dict, dict]:
        """(scalar scores, details)."""
        raise NotImplementedError

    def llava_text(self, record: dict) -> str:
        """The question as LLaVA's question file writes it (the record's `"prompt"`, e.g.
        "What is this?\\nAnswer the question using a single word or phrase."), or the
        question plus `prompt_suffix` where the record has none (or `llava_prompt` is off)."""
        if self.options["llava_prompt"] and record.get("prompt"):
            return record["prompt"]
        return record["question"] + self.options["prompt_suffix"]

    # ----- shared ----------------------------------------------------------------------------
    def records(self, model: EvalModel) -> list[dict]:
        o = self.options
        return load_records(o["data"], self.task, o["num_samples"], model.image.size, seed=o["seed"],
                            scene=o["scene"])

    def support(self, model: EvalModel, records: list[dict]) -> list[dict]:
        o = self.options
        if o["support_data"] is not None:
            return load_records(o["support_data"], self.task, None, model.image.size, support=True)
        if o["data"] in (None, "embedded"):
            return load_records("embedded", self.task, o["support_samples"], model.image.size,
                                support=True, seed=o["seed"], scene=o["scene"])
        return records

    def prompts(self, model: EvalModel, records: list[dict]) -> list[Prompt]:
        o = self.options
        document = model.template in DOCUMENT_TEMPLATES
        shots = int(o["shots"])
        support = self.support(model, records) if shots else []
        out = []
        for r in records:
            examples = [(self.question(e, document), self.example_answer(e), e.get("image"))
                        for e in select_examples(support, r, shots, o["seed"])]
            out.append(encode(model, self.question(r, document), r.get("image"), examples=examples))
        return out

    def nonempty_records(self, model: EvalModel) -> list[dict]:
        records = self.records(model)
        if not records:
            raise ValueError(f"evaluator {self.name!r}: no records to evaluate")
        return records

    def max_new_tokens(self, model: EvalModel, records: list[dict]) -> int:
        """The generation budget per answer (the option; subclasses may derive a default)."""
        return int(self.options["max_new_tokens"])

    def generate(self, model: EvalModel, records: list[dict]) -> tuple[list[Prompt], list[str]]:
        """(prompts, generated answers) for the records."""
        o = self.options
        prompts = self.prompts(model, records)
        return prompts, generate_texts(model, prompts, batch_size=int(o["batch_size"]),
                                       max_new_tokens=self.max_new_tokens(model, records),
                                       progress=bool(o["progress"]), desc=self.name)

    def run(self, model: EvalModel) -> EvalResult:
        records = self.nonempty_records(model)
        prompts, answers = self.generate(model, records)
        scores, details = self.score(records, answers)
        scores["num_samples"] = len(records)
        predictions = [answer_row(r["question_id"], self.answer_prompt(r), a, model.name,
                                  rendered_prompt=rendered(model, p))
                       for r, p, a in zip(records, prompts, answers)]
        return self.result(scores, predictions, details)

    def answer_prompt(self, record: dict) -> str:
        """The answer file's `prompt`: the question text as LLaVA's answer files carry it."""
        return self.llava_text(record)


def rendered(model: EvalModel, prompt: Prompt) -> str:
    """The prompt's tokens decoded, each image's run of tokens shown as one `<image>`."""
    image_id = getattr(model.tokenizer, "image_token_id", None)
    ids = [int(i) for n, i in enumerate(prompt.ids)
           if not (i == image_id and n > 0 and prompt.ids[n - 1] == image_id)]
    return model.tokenizer.decode(ids)
