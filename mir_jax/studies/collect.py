"""study.json from finished workdirs: each variant's stage-`mir_stage` MIR (overall and per
layer) and held-out loss, its stage-`score_stage` downstream scores, the score the study ranks
by, and the rank correlations of MIR and of loss with that score.

The numbers are the trainer's own final evaluation rows in each workdir's metrics.jsonl
(split "eval" at the last step: loss, mir, mir_per_layer, the hidden-state norms; split
"downstream": "EVALUATOR/METRIC" values), so `--collect` works on runs submitted as separate
jobs. With several seeds a variant's values are the means over its seeds, with `std` and
`seeds` beside them. study.json's schema (stable; keys are only ever added) and the seeds'
rules: docs/studies.md.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

import numpy as np

from . import bootstrap
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


def _mean(values) -> float | None:
    """The mean of the values that are not None (x itself for one value); None if there are none."""
    xs = [x for x in values if x is not None]
    return sum(xs) / len(xs) if xs else None


def _std(values) -> float | None:
    """The sample standard deviation (ddof 1) of the values that are not None; None below two."""
    xs = [x for x in values if x is not None]
    return float(np.std(xs, ddof=1)) if len(xs) >= 2 else None


def _per_layer(value) -> list | None:
    return list(value) if isinstance(value, (list, tuple)) and len(value) else None


def _mean_per_layer(curves: list) -> list | None:
    """The per-layer mean of the seeds' curves that are there (a single curve as it is); None if
    there are none or their lengths differ."""
    curves = [c for c in curves if c is not None]
    if len(curves) <= 1:
        return curves[0] if curves else None
    if len({len(c) for c in curves}) != 1:
        return None
    try:
        return [float(x) for x in np.mean(np.asarray(curves, np.float64), axis=0)]
    except (TypeError, ValueError):
        return None


def _seed_entry(study: Study, workdirs: dict[str, str], k: int) -> dict[str, Any]:
    """One seed's values: the final rows of its mir_stage and score_stage runs."""
    entry: dict[str, Any] = {"seed": k, "workdirs": workdirs, "mir": None, "mir_per_layer": None,
                             "vision_norm_per_layer": None, "text_norm_per_layer": None,
                             "stage1_loss": None, "scores": {}, "score": None}
    if study.mir_stage:
        ev, _ = final_rows(workdirs[study.mir_stage])
        entry["mir"] = _finite(ev.get("mir"))
        entry["mir_per_layer"] = _per_layer(ev.get("mir_per_layer"))
        entry["vision_norm_per_layer"] = _per_layer(ev.get("mir_vision_norm_per_layer"))
        entry["text_norm_per_layer"] = _per_layer(ev.get("mir_text_norm_per_layer"))
        entry["stage1_loss"] = _finite(ev.get("loss"))
    _, down = final_rows(workdirs[study.score_stage])
    entry["scores"] = nested_scores(down)
    values = [down.get(m) for m in study.score_metrics]
    if all(_finite(x) is not None for x in values):
        entry["score"] = sum(values) / len(values)
    return entry


def _variant_entry(name: str, overrides: dict, seeds: list[dict[str, Any]]) -> dict[str, Any]:
    """A variant's study.json entry: the means over its seeds under the one-seed keys, their
    spread under "std", each seed's own values under "seeds"."""
    scores: dict[str, dict[str, float]] = {}
    for evaluator in dict.fromkeys(e for s in seeds for e in s["scores"]):
        for metric in dict.fromkeys(m for s in seeds for m in s["scores"].get(evaluator, {})):
            scores.setdefault(evaluator, {})[metric] = _mean([s["scores"].get(evaluator, {}).get(metric)
                                                             for s in seeds])
    entry: dict[str, Any] = {"name": name, "overrides": overrides, "workdirs": seeds[0]["workdirs"]}
    entry["mir"] = _mean([s["mir"] for s in seeds])
    entry["mir_per_layer"] = _mean_per_layer([s["mir_per_layer"] for s in seeds])
    entry["stage1_loss"] = _mean([s["stage1_loss"] for s in seeds])
    entry["scores"] = scores
    entry["score"] = _mean([s["score"] for s in seeds])
    for key in ("vision_norm_per_layer", "text_norm_per_layer"):
        entry[key] = _mean_per_layer([s[key] for s in seeds])
    entry["std"] = {k: _std([s[k] for s in seeds]) for k in ("mir", "stage1_loss", "score")}
    entry["seeds"] = seeds
    return entry


def _correlation(variants: list[dict[str, Any]], key: str) -> dict[str, Any]:
    """The rank correlations of variants' mean `key` with their mean score, and their bootstrap
    intervals over seeds (mir_jax/studies/bootstrap.py)."""
    out: dict[str, Any] = {"spearman": None, "kendall": None,
                           "interval": {"spearman": None, "kendall": None},
                           "n_bootstrap": bootstrap.N_BOOTSTRAP, "confidence": bootstrap.CONFIDENCE}
    used = [e for e in variants if e[key] is not None and e["score"] is not None]
    if len(used) < 2:
        return out
    out.update({k: _finite(c) for k, c in rank_correlations([e[key] for e in used],
                                                            [e["score"] for e in used]).items()})
    groups = [[(s[key], s["score"]) for s in e["seeds"] if s[key] is not None and s["score"] is not None]
              for e in used]
    if all(groups):  # (a variant whose MIR and score come from different seeds has no pair to draw)
        out["interval"] = bootstrap.correlation_intervals(groups)
    return out


def collect(study: Study, runs: list[Run]) -> dict[str, Any]:
    """The study.json dict (see the module docstring)."""
    by_key = {(r.variant, r.stage.name, r.seed): r for r in runs}
    variants = []
    for v in study.variants:
        def workdirs(k: int, variant: str = v.name) -> dict[str, str]:
            return {s.name: by_key[(SHARED, s.name, 0) if s.shared else (variant, s.name, k)].workdir
                    for s in study.stages}

        seeds = [_seed_entry(study, workdirs(k), k) for k in range(study.seeds)]
        variants.append(_variant_entry(v.name, v.overrides, seeds))

    out = {"study": study.name, "description": study.description, "score_metrics": list(study.score_metrics),
           "n_seeds": study.seeds, "variants": variants,
           "correlation": {"mir": _correlation(variants, "mir"), "loss": _correlation(variants, "stage1_loss")}}
    if study.summarize is not None:
        out["summary"] = study.summarize({v["name"]: v for v in variants})
    return out
