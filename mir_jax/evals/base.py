"""The evaluator interface: one registry, one way to run any evaluation on a model.

    evaluator = get_evaluator("vqa", shots=4, num_samples=200)    # options checked here
    result = evaluator.run(EvalModel(...))                        # -> EvalResult
    write_result(result, output_dir)                              # scores JSON + answer file

Evaluators register under their name (as big_vision's) and declare their options in `OPTIONS`;
`build_evals` turns the dict form {KEY: {"every": K, "evaluator": NAME, **options}} into
evaluators. `EvalResult.scores` holds flat scalars, `details` the rest ("scorer": the official
scorer the scores equal), `predictions` rows of LLaVA's answer-file format. More:
docs/evaluation.md.
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

    template: its prompt template ("vicuna_v1", "chat", "plain", ...); system: the system
    prompt (None: the template's own); mesh: optional, batches shard over its data axes;
    weights: which weights it holds (`mir_jax.weights.WeightsSource`), for the record.
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
    # The training loop's metrics.jsonl split: "eval" (held-out measurements: forward passes on
    # the sharded model in every process) or "downstream" (generation on process 0).
    split: ClassVar[str] = "downstream"
    auto_batch: ClassVar[bool] = False  # batch_size=0 picks one for the mesh (`auto_batch_size`)

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
            least = 0 if key == "batch_size" and self.auto_batch else 1
            value = self.options.get(key)
            if value is not None and (not _is_int(value) or int(value) < least):
                raise ValueError(f"evaluator {self.name!r}: {key}={value!r} must be an integer >= {least}"
                                 + (" (0: picked for the mesh)" if least == 0 else ""))

    def run(self, model: EvalModel) -> EvalResult:
        raise NotImplementedError

    @classmethod
    def loop_options(cls, options: dict, run_config) -> dict:
        """`options` of an entry of the training config `run_config` with what the evaluator
        takes from the run when the entry leaves it open (default: nothing)."""
        return dict(options)

    def prepare(self, model: EvalModel) -> None:
        """Builds the fixed record set once (`self.fixed`) for the training loop's repeated
        `run`s, before the first step so bad data stops the run early. Default: nothing."""

    def metrics(self, result: EvalResult, key: str) -> dict[str, Any]:
        """The fields `result` adds to the loop's metrics.jsonl row: {"KEY/score": value}."""
        return {f"{key}/{k}": v for k, v in result.scores.items() if k != "num_samples"}

    def report(self, result: EvalResult, key: str) -> str:
        """What the loop prints of `result`: its headline scores ("KEY/cider=0.912")."""
        from .score_plot import HEADLINE_SCORES

        return " ".join(f"{key}/{k}={v:.3f}" for k, v in result.scores.items() if k in HEADLINE_SCORES)

    def result(self, scores: dict, predictions=(), details=None) -> EvalResult:
        return EvalResult(self.name, {k: float(v) for k, v in scores.items()}, list(predictions),
                          details or {}, dict(self.options))


def bind_model(model, mesh: Mesh | None, jitted, keys):
    """batch (a host dict of the pipeline's batch contract) -> jitted(graphdef, state, inputs),
    for a jitted function of (graphdef, state, {key: array}) with graphdef static.

    With a mesh the parameters follow the logical-axis rules, each device takes its rows of the
    batch every process holds whole (`sharding.batch_from_full`, multi-host safe), and the call
    runs under the mesh. MIR, the held-out loss and likelihood scoring run through this."""
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


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def auto_batch_size(requested: int, mesh: Mesh | None) -> int:
    """The batch of an `auto_batch` evaluator: `requested`, or for 0 the smallest multiple of the
    mesh's data-parallel shards and the processes that is at least 16
    (`sharding.eval_batch_rows`, ValueError when `requested` does not split)."""
    import jax

    from mir_jax.sharding import data_parallel_size, eval_batch_rows

    return eval_batch_rows(int(requested), data_parallel_size(mesh), jax.process_count())


REGISTRY: dict[str, type[Evaluator]] = {}


def register(cls: type[Evaluator]) -> type[Evaluator]:
    """Class decorator: make an evaluator available by its `name`."""
    REGISTRY[cls.name] = cls
    return cls


ENTRY_KEYS = ("every", "evaluator")  # the keys of an entry that are not evaluator options


def split_entry(key: str, entry) -> tuple[str, object, dict]:
    """One entry KEY: {every?, evaluator?, **options} of the dict form (module docstring) ->
    (evaluator name, every (default 0), options). ValueError (one line) unless it is a dict."""
    if not hasattr(entry, "items"):
        raise ValueError(f"evals.{key}={entry!r} must be a dict of options, e.g. {{\"every\": 500}}")
    entry = entry.to_dict() if hasattr(entry, "to_dict") else dict(entry)  # ConfigDicts to plain dicts
    options = {k: v for k, v in entry.items() if k not in ENTRY_KEYS}
    return str(entry.get("evaluator") or key), entry.get("every", 0), options


def evals_items(evals) -> list[tuple[str, Any]]:
    """(KEY, entry) of the dict form; ValueError (one line) for anything but a dict, e.g. the
    list of {name, ...} entries `config.evals` was before."""
    if evals is None:
        return []
    if not hasattr(evals, "items"):
        raise ValueError(f"evals must be a dict keyed by name, {{KEY: {{\"every\": K, **options}}}} "
                         f"(e.g. {{\"vqa\": {{\"every\": 500, \"shots\": 4}}}}), not {type(evals).__name__}")
    return list(evals.items())


def build_evals(evals, *, run_config=None) -> list[tuple[str, int, Evaluator]]:
    """(KEY, every, evaluator) for each entry of the dict form `evals`, in its order; with the
    training config `run_config`, each evaluator's `loop_options` fill in what the entry leaves
    to the run. ValueError (one line naming the entry) for an unknown evaluator or option, an
    impossible value or `every` < 0."""
    out = []
    for key, entry in evals_items(evals):
        name, every, options = split_entry(key, entry)
        if not _is_int(every) or every < 0:
            raise ValueError(f"evals.{key}.every={every!r} must be an integer >= 0 (0: at the end only)")
        try:
            if name in REGISTRY and run_config is not None:
                options = REGISTRY[name].loop_options(options, run_config)
            out.append((str(key), every, get_evaluator(name, **options)))
        except ValueError as e:
            raise ValueError(f"evals.{key}: {e}") from e
    return out


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
    """Write `{prefix}{evaluator}_scores.json` (naming the official scorer under "scorer") and
    `{prefix}{evaluator}_predictions.jsonl`, each via a temporary name, so a crash never
    leaves a partial file."""
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
