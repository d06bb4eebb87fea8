"""The evaluator interface: one registry, one way to run any evaluation on a model.

    evaluator = get_evaluator("vqa", shots=4, num_samples=200)    # options checked here
    result = evaluator.run(EvalModel(...))                        # -> EvalResult
    write_result(result, output_dir)                              # scores JSON + answer file

Every evaluator is a class registered under its name (big_vision's evaluators, picked by
name from the config): the training loop builds them from `config.evals`
(`[{"name": "caption", "every": 100, **options}]`), `evaluate.py` from `--evals=...`.
An evaluator declares its options and their defaults in `OPTIONS`; an unknown option or an
impossible value is one `ValueError` line naming it.

`EvalResult.scores` holds flat scalars (what goes to metrics.jsonl, TensorBoard, the table
and the plot, e.g. {"cider": 0.91, "bleu_4": 0.33}); `details` holds the rest (per-layer
MIR, per-category POPE, "scorer": the official scorer the scores equal); `predictions` are
rows of LLaVA's answer-file format (`question_id` with the source file's type, `prompt` = the
question text, `text`, `answer_id`, `model_id`, `metadata`), so LLaVA's scripts read them
unchanged.
"""

from __future__ import annotations

import dataclasses
import json
import os
import uuid
from typing import Any, ClassVar

from jax.sharding import Mesh

from mir_jax.data.images import ImageConfig


@dataclasses.dataclass
class EvalModel:
    """A model and what it takes to feed it as it was trained.

    template: the prompt template of its instruction data ("vicuna_v1", "chat") or of its
    pre-training ("plain"); evaluators phrase their prompts with it. system: the system
    prompt (None: the template's own). mesh: optional; batches shard over its data axes.
    weights: which weights the model holds (`mir_jax.weights.WeightsSource`), for the record.
    """

    name: str
    model: Any  # mir_jax.models.LlavaModel
    tokenizer: Any
    image: ImageConfig
    template: str = "vicuna_v1"
    system: str | None = None
    mesh: Mesh | None = None
    path: str = ""
    weights: Any = None  # mir_jax.weights.WeightsSource

    @property
    def config(self):
        return self.model.config

    @property
    def num_image_tokens(self) -> int:
        return int(self.model.config.num_image_tokens)

    @property
    def context(self) -> int:
        """The longest sequence the model takes (prompt + generated tokens)."""
        return int(self.model.config.text.max_position_embeddings)


@dataclasses.dataclass
class EvalResult:
    """What one evaluator measured on one model (see the module docstring)."""

    evaluator: str
    scores: dict[str, float]
    predictions: list[dict] = dataclasses.field(default_factory=list)
    details: dict[str, Any] = dataclasses.field(default_factory=dict)
    options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        details = {k: v.to_json() if hasattr(v, "to_json") else v for k, v in self.details.items()}
        return {"evaluator": self.evaluator, "scores": self.scores, "details": details,
                "options": self.options, "num_predictions": len(self.predictions)}


class Evaluator:
    """Base class: subclasses set `name`, `OPTIONS` (option -> default) and implement `run`."""

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[dict[str, Any]] = {}

    def __init__(self, **options):
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            raise ValueError(f"evaluator {self.name!r}: unknown option(s) {unknown}; "
                             f"known: {sorted(self.OPTIONS)}")
        self.options = {**self.OPTIONS, **options}
        self.check_options()

    def check_options(self) -> None:
        """Raise a one-line ValueError for an impossible option value (subclasses extend)."""
        for key in ("num_samples", "batch_size", "max_new_tokens"):
            if key in self.options and self.options[key] is not None and int(self.options[key]) < 1:
                raise ValueError(f"evaluator {self.name!r}: {key}={self.options[key]} must be >= 1")

    def run(self, model: EvalModel) -> EvalResult:
        raise NotImplementedError

    def result(self, scores: dict, predictions=(), details=None) -> EvalResult:
        return EvalResult(self.name, {k: float(v) for k, v in scores.items()}, list(predictions),
                          details or {}, dict(self.options))


def bind_model(model, mesh: Mesh | None, jitted, keys):
    """batch (a host dict of the pipeline's batch contract) -> jitted(graphdef, state, inputs),
    for a jitted function of (graphdef, state, {key: array}) with graphdef static.

    Without a mesh the inputs are the host arrays. With one, the parameters follow the
    logical-axis rules (already-sharded ones, as in the training loop, stay where they are),
    each device takes its rows of the batch, which every process holds whole
    (`sharding.batch_from_full`, multi-host safe), and the call runs under the mesh so the
    model's sharding constraints apply. MIR, the held-out loss and likelihood scoring all run
    through this."""
    import jax
    import numpy as np
    from flax import nnx

    from mir_jax import sharding

    graphdef, state = nnx.split(model)
    if mesh is not None:
        state = jax.device_put(state, sharding.state_shardings(state, mesh))

    def run(batch):
        if mesh is None:
            return jitted(graphdef, state, {k: None if batch.get(k) is None else np.asarray(batch[k])
                                            for k in keys})
        with sharding.use_mesh(mesh):
            return jitted(graphdef, state, sharding.batch_from_full(batch, mesh, keys))

    return run


REGISTRY: dict[str, type[Evaluator]] = {}


def register(cls: type[Evaluator]) -> type[Evaluator]:
    """Class decorator: make an evaluator available by its `name`."""
    REGISTRY[cls.name] = cls
    return cls


ENTRY_KEYS = ("name", "every", "key")


def split_entry(entry: dict) -> tuple[str, object, str, dict]:
    """A `config.evals` entry {name, every, key?, **options} -> (name, every, key, options).
    The key names its metrics ("vqa/accuracy"): by default the evaluator's name, with
    "_Kshot" for K-shot entries."""
    options = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
    name = entry["name"]
    key = entry.get("key") or name + (f"_{int(options['shots'])}shot" if options.get("shots") else "")
    return name, entry.get("every", 0), key, options


def get_evaluator(name: str, **options) -> Evaluator:
    """The registered evaluator `name`, built with `options` (one-line error when unknown)."""
    if name not in REGISTRY:
        raise ValueError(f"unknown evaluator {name!r}; known: {sorted(REGISTRY)}")
    return REGISTRY[name](**options)


def answer_row(question_id, prompt: str, text: str, model_id: str, **extra) -> dict:
    """One line of LLaVA's answer file, the keys `model_vqa_loader.py` writes.

    question_id: the source file's id, its type kept (LLaVA's scripts key dicts by it);
    prompt: the question text as LLaVA's question file has it; extra: into `metadata`."""
    return {"question_id": question_id, "prompt": prompt, "text": text,
            "answer_id": uuid.uuid4().hex[:22], "model_id": model_id, "metadata": extra}


def write_result(result: EvalResult, output_dir: str, prefix: str = "") -> tuple[str, str | None]:
    """`{prefix}{evaluator}_scores.json` and (if any) `{prefix}{evaluator}_predictions.jsonl`
    (one JSON object a line), each written to a temporary name and renamed, so a crash never
    leaves a partial file. The scores JSON names, under "scorer", the official scorer its
    numbers equal (from the evaluator's details)."""
    os.makedirs(output_dir, exist_ok=True)
    scores = os.path.join(output_dir, f"{prefix}{result.evaluator}_scores.json")
    payload = result.to_json()
    if "scorer" in result.details:
        payload = {"scorer": result.details["scorer"], **payload}
    _atomic_write(scores, json.dumps(payload, indent=1, default=_jsonable))
    answers = None
    if result.predictions:
        answers = os.path.join(output_dir, f"{prefix}{result.evaluator}_predictions.jsonl")
        _atomic_write(answers, "".join(json.dumps(r, default=_jsonable) + "\n" for r in result.predictions))
    return scores, answers


def _jsonable(x):
    import numpy as np

    if isinstance(x, np.ndarray):
        return x.tolist()
    if isinstance(x, np.generic):
        return x.item()
    return str(x)


def _atomic_write(path: str, text: str) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)
