"""A study: variants of a recipe taken through stages, as data.

A study config is a Python file (`configs/studies/NAME.py`) whose `get_study(arg)` returns a
dict (`arg` as for recipes, e.g. "runlocal"):

    {"name": "mir_vs_sft",
     "stages": [                                  # in order; each is one train.py run
         {"name": "stage0", "config": "configs/stage0.py:runlocal", "shared": True},
         {"name": "stage1", "config": "configs/llava15_pretrain.py:runlocal",
          "init_from": "stage0",                  # that stage's workdir seeds this one
          "overrides": {"init_parts": "vision,llm"}},
         {"name": "sft", "config": "configs/llava15_sft.py:runlocal", "init_from": "stage1",
          "overrides": {"evals": {"vqa": {"every": 0}}}}],
     "variants": [{"name": "steps_20", "overrides": {"stage1": {"total_steps": 20}}}, ...],
     "mir_stage": "stage1",                       # MIR and loss: its final held-out eval
     "score_stage": "sft",                        # scores: its final downstream evals
     "score_metrics": ["vqa/accuracy", ...],      # "score" = their mean
     "description": "...",
     "derive": None,                              # optional: results -> more variants
     "summarize": None,                           # optional: results -> study.json "summary"
     "seeds": 1}                                  # optional: runs of each variant (study.py --seeds)

`derive(results)`, given {variant name: its study.json entry} for the variants so far, returns
variants to add (dicts as above; those already known are ignored): the driver runs them,
collects, and calls it again until nothing is new. This is how a procedure whose next run
depends on earlier scores (Individual Select's greedy pass) is one study. `summarize(results)`
returns what the procedure concluded (e.g. the selected set), stored as study.json's "summary".

Overrides are `--config.KEY=VALUE` pairs (`KEY` dotted, e.g. "model.connector.name"); a
variant's overrides are keyed by stage name, or "all" for every stage of the variant. A
`shared` stage runs once for the whole study (variants may not override it). `init_from` of
a stage names an earlier stage; a stage may also set `config.init_from` itself (real data:
the HF stage-1 start), and `extra` overrides from the command line reach every run
(`study.py --set=stage1.tokenizer=/ckpt/vicuna`).

`seeds` (default 1; `study.py --seeds=N` overrides it) runs every variant's non-shared stages
N times with seeds offset by k (docs/studies.md); a stage may then not be named `seed_K`.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
from collections.abc import Callable
from typing import Any


class StudyError(ValueError):
    """The study config cannot be run as written; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Stage:
    name: str
    config: str                       # "configs/X.py[:ARG]", relative to the repository
    init_from: str | None = None      # an earlier stage's name
    overrides: dict[str, Any] = dataclasses.field(default_factory=dict)
    shared: bool = False


@dataclasses.dataclass(frozen=True)
class Variant:
    name: str
    overrides: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Study:
    name: str
    stages: tuple[Stage, ...]
    variants: tuple[Variant, ...]
    mir_stage: str | None
    score_stage: str
    score_metrics: tuple[str, ...]
    description: str = ""
    derive: Callable[[dict], list] | None = None
    summarize: Callable[[dict], dict] | None = None
    seeds: int = 1                    # runs of each variant's non-shared stages, config seeds base+k

    def stage(self, name: str) -> Stage:
        return next(s for s in self.stages if s.name == name)


_STUDY_KEYS = {"name", "stages", "variants", "mir_stage", "score_stage", "score_metrics", "description", "derive",
               "summarize", "seeds"}
_STAGE_KEYS = {f.name for f in dataclasses.fields(Stage)}


def _check_name(kind: str, name: Any) -> str:
    if not isinstance(name, str) or not name or "/" in name or name.startswith("."):
        raise StudyError(f"{kind} name {name!r} must be a non-empty string without '/' (it names a folder)")
    return name


def from_dict(d: dict) -> Study:
    """The Study a `get_study` dict describes; every inconsistency is one StudyError line."""
    unknown = set(d) - _STUDY_KEYS
    if unknown:
        raise StudyError(f"study keys {sorted(unknown)} unknown; known: {sorted(_STUDY_KEYS)}")
    stages = []
    for s in d.get("stages") or []:
        bad = set(s) - _STAGE_KEYS
        if bad:
            raise StudyError(f"stage {s.get('name')!r}: keys {sorted(bad)} unknown; known: {sorted(_STAGE_KEYS)}")
        stage = Stage(**{**s, "overrides": dict(s.get("overrides") or {})})
        _check_name("stage", stage.name)
        if stage.name in {x.name for x in stages} or stage.name == "all":
            raise StudyError(f"stage name {stage.name!r} is used twice or reserved")
        if stage.init_from is not None and stage.init_from not in {x.name for x in stages}:
            raise StudyError(f"stage {stage.name!r}: init_from={stage.init_from!r} is not an earlier stage "
                             f"({[x.name for x in stages]})")
        if stage.init_from and "init_from" in stage.overrides:
            raise StudyError(f"stage {stage.name!r} sets init_from twice (a stage name and an override)")
        stages.append(stage)
    if not stages:
        raise StudyError("a study needs at least one stage")
    variants = _variants(d.get("variants") or [], tuple(stages), ())
    if not variants:
        raise StudyError("a study needs at least one variant")
    for key in ("derive", "summarize"):
        if d.get(key) is not None and not callable(d[key]):
            raise StudyError(f"{key} must be a function of the results so far")
    score_stage = d.get("score_stage") or stages[-1].name
    mir_stage = d.get("mir_stage")
    names = {s.name for s in stages}
    for key, value in (("score_stage", score_stage), ("mir_stage", mir_stage)):
        if value is not None and value not in names:
            raise StudyError(f"{key}={value!r} is not a stage ({sorted(names)})")
    metrics = tuple(d.get("score_metrics") or ())
    if not metrics or any(not isinstance(m, str) or "/" not in m for m in metrics):
        raise StudyError(f"score_metrics={list(metrics)!r}: give one or more 'evaluator/metric' names")
    return Study(_check_name("study", d.get("name")), tuple(stages), tuple(variants), mir_stage, score_stage,
                 metrics, str(d.get("description") or ""), d.get("derive"), d.get("summarize"),
                 check_seeds(d.get("seeds", 1), tuple(stages)))


def check_seeds(seeds: Any, stages: tuple[Stage, ...]) -> int:
    """`seeds` as an int >= 1; with more than one, no stage may be named like a seed folder."""
    if isinstance(seeds, bool) or not isinstance(seeds, int) or seeds < 1:
        raise StudyError(f"seeds={seeds!r} must be an integer >= 1 (runs of each variant)")
    clash = [s.name for s in stages if seeds > 1 and re.fullmatch(r"seed_\d+", s.name)]
    if clash:
        raise StudyError(f"stage name {clash[0]!r} clashes with the seed folders (DIR/VARIANT/seed_K/STAGE)")
    return seeds


def with_seeds(study: Study, seeds: int) -> Study:
    """The study run `seeds` times per variant (`study.py --seeds`)."""
    return dataclasses.replace(study, seeds=check_seeds(seeds, study.stages))


def _variants(items: list[dict], stages: tuple[Stage, ...], known: tuple[Variant, ...]) -> list[Variant]:
    names, out = {s.name for s in stages}, []
    for v in items:
        variant = Variant(_check_name("variant", v.get("name")), dict(v.get("overrides") or {}))
        if variant.name in {x.name for x in (*known, *out)} or variant.name == "shared":
            raise StudyError(f"variant name {variant.name!r} is used twice or reserved")
        for stage_name in variant.overrides:
            if stage_name != "all" and stage_name not in names:
                raise StudyError(f"variant {variant.name!r} overrides stage {stage_name!r}, which the study "
                                 f"lacks ({sorted(names)} or 'all')")
            if stage_name != "all" and next(s for s in stages if s.name == stage_name).shared:
                raise StudyError(f"variant {variant.name!r} overrides the shared stage {stage_name!r}")
        out.append(variant)
    return out


def with_derived(study: Study, results: dict[str, dict]) -> Study:
    """The study with the variants `study.derive(results)` adds (those not yet in it)."""
    if study.derive is None:
        return study
    known = {v.name for v in study.variants}
    new = [v for v in (study.derive(results) or []) if v.get("name") not in known]
    if not new:
        return study
    return dataclasses.replace(study, variants=study.variants + tuple(_variants(new, study.stages, study.variants)))


def load(spec: str, repo_root: str) -> Study:
    """configs/studies/NAME.py[:ARG] (a path, relative to `repo_root` or absolute) -> Study."""
    path, _, arg = spec.partition(":")
    full = path if os.path.isabs(path) else os.path.join(repo_root, path)
    if not os.path.isfile(full):
        raise StudyError(f"--study {spec!r}: no file {full}")
    module_spec = importlib.util.spec_from_file_location(f"_study_{os.path.basename(path)[:-3]}", full)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 -- a broken study file: name it in one line
        raise StudyError(f"--study {spec!r}: {type(e).__name__}: {e}") from e
    if not hasattr(module, "get_study"):
        raise StudyError(f"--study {spec!r}: {full} has no get_study(arg)")
    try:
        d = module.get_study(arg or None)
    except ValueError as e:
        raise StudyError(f"--study {spec!r}: {e}") from e
    return from_dict(d)


def parse_set(items: list[str]) -> dict[str, dict[str, str]]:
    """['stage1.tokenizer=/ckpt/v', 'all.seed=1'] -> {"stage1": {"tokenizer": "/ckpt/v"}, ...}."""
    out: dict[str, dict[str, str]] = {}
    for item in items:
        key, eq, value = item.partition("=")
        stage, dot, rest = key.partition(".")
        if not eq or not dot or not rest:
            raise StudyError(f"--set {item!r}: use STAGE.KEY=VALUE (STAGE a stage name or 'all')")
        out.setdefault(stage, {})[rest] = value
    return out
