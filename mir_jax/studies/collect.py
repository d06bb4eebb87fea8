"""study.json from finished workdirs: each variant's stage-`mir_stage` MIR (overall and per
layer) and held-out loss, its stage-`score_stage` downstream scores, the score the study ranks
by, and the rank correlations of MIR and of loss with that score.

The numbers are the trainer's own final evaluation rows in each workdir's metrics.jsonl
(split "eval" at the last step: loss, mir, mir_per_layer; split "downstream": "EVALUATOR/
METRIC" values), so `--collect` works on runs submitted as separate jobs.

study.json (a stable schema; keys are only ever added):
  {"study": NAME,
   "variants": [{"name", "overrides": {stage: {key: value}}, "workdirs": {stage: path},
                 "mir", "mir_per_layer", "stage1_loss",
                 "scores": {evaluator: {metric: value}}, "score"}],
   "correlation": {"mir": {"spearman", "kendall"}, "loss": {"spearman", "kendall"}}}
`stage1_loss` is the held-out loss of `mir_stage` (LLaVA's stage 1 in the shipped studies);
values a run has not produced (yet) are null, as are undefined correlations.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

from .correlation import rank_correlations
from .runs import SHARED, Run, total_steps
from .spec import Study


def _rows(workdir: str) -> list[dict]:
    try:
        with open(os.path.join(workdir, "metrics.jsonl")) as f:
            return [json.loads(line) for line in f if line.strip()]
    except OSError:
        return []


def final_rows(workdir: str) -> tuple[dict, dict]:
    """(the "eval" row, the merged "downstream" rows) of the run's last step; {} where absent."""
    total = total_steps(workdir)
    rows = [r for r in _rows(workdir) if total is not None and r.get("step") == total]
    ev = next((r for r in reversed(rows) if r.get("split") == "eval"), {})
    down: dict[str, Any] = {}
    for r in rows:
        if r.get("split") == "downstream":
            down.update({k: v for k, v in r.items() if k not in ("step", "split")})
    return ev, down


def nested_scores(flat: dict[str, Any]) -> dict[str, dict[str, float]]:
    """{"vqa/accuracy": 0.5, "caption_4shot/cider": 0.1} -> {"vqa": {"accuracy": 0.5}, ...}."""
    out: dict[str, dict[str, float]] = {}
    for key, value in flat.items():
        evaluator, _, metric = key.rpartition("/")
        if evaluator and isinstance(value, (int, float)):
            out.setdefault(evaluator, {})[metric] = float(value)
    return out


def _finite(value) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def collect(study: Study, runs: list[Run]) -> dict[str, Any]:
    """The study.json dict (see the module docstring)."""
    by_key = {(r.variant, r.stage.name): r for r in runs}
    variants = []
    for v in study.variants:
        def run_of(stage_name: str, variant: str = v.name) -> Run:
            stage = study.stage(stage_name)
            return by_key[(SHARED if stage.shared else variant, stage_name)]

        entry: dict[str, Any] = {
            "name": v.name, "overrides": v.overrides,
            "workdirs": {s.name: run_of(s.name).workdir for s in study.stages},
            "mir": None, "mir_per_layer": None, "stage1_loss": None, "scores": {}, "score": None}
        if study.mir_stage:
            ev, _ = final_rows(run_of(study.mir_stage).workdir)
            entry["mir"] = _finite(ev.get("mir"))
            entry["mir_per_layer"] = ev.get("mir_per_layer")
            entry["stage1_loss"] = _finite(ev.get("loss"))
        _, down = final_rows(run_of(study.score_stage).workdir)
        entry["scores"] = nested_scores(down)
        values = [down.get(m) for m in study.score_metrics]
        if all(_finite(x) is not None for x in values):
            entry["score"] = sum(values) / len(values)
        variants.append(entry)

    def correlations(key: str) -> dict[str, float | None]:
        pairs = [(e[key], e["score"]) for e in variants if e[key] is not None and e["score"] is not None]
        if len(pairs) < 2:
            return {"spearman": None, "kendall": None}
        xs, ys = zip(*pairs)
        return {k: _finite(c) for k, c in rank_correlations(xs, ys).items()}

    out = {"study": study.name, "description": study.description, "score_metrics": list(study.score_metrics),
           "variants": variants,
           "correlation": {"mir": correlations("mir"), "loss": correlations("stage1_loss")}}
    if study.summarize is not None:
        out["summary"] = study.summarize({v["name"]: v for v in variants})
    return out
