"""A study's runs: one ordinary training workdir per (variant, stage), the `train.py` command
that makes it, whether it is finished, and running it.

Layout under the study's DIR: `shared/STAGE` for shared stages, `VARIANT/STAGE` for the rest,
and `VARIANT/seed_K/STAGE` for seeds k >= 1. A run is finished when its workdir holds the
checkpoint of its config's last step (what `train.py` takes for "already done"); rerunning the
command resumes an interrupted one. Each workdir also gets `study_run.json` (the command, the
wall time) and `train.log` (the command's output).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shlex
import subprocess
import sys
import time
from typing import Any

from .spec import Stage, Study, StudyError

SHARED = "shared"


@dataclasses.dataclass(frozen=True)
class Run:
    variant: str                   # a variant's name, or SHARED
    stage: Stage
    workdir: str
    overrides: dict[str, Any]      # --config.KEY=VALUE pairs, init_from included
    after: tuple[str, ...]         # workdirs this run starts from (must be finished first)
    seed: int = 0                  # k of the study's seeds (0 for shared stages)

    @property
    def label(self) -> str:
        return f"{self.variant}/seed_{self.seed}/{self.stage.name}" if self.seed else f"{self.variant}/{self.stage.name}"


def format_value(value: Any) -> str:
    """A config value as `--config.KEY=` takes it: JSON for lists and dicts, true/false."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, tuple, dict)):
        return json.dumps(value)
    return str(value)


def plan(study: Study, directory: str, extra: dict[str, dict[str, Any]] | None = None) -> list[Run]:
    """Every run of the study, in an order that runs each run's source first."""
    extra = extra or {}
    unknown = set(extra) - {s.name for s in study.stages} - {"all"}
    if unknown:
        raise StudyError(f"--set names stage(s) {sorted(unknown)}; the study has {[s.name for s in study.stages]}")
    directory = os.path.abspath(directory)

    def workdir(variant: str, stage: Stage, k: int) -> str:
        if stage.shared:
            return os.path.join(directory, SHARED, stage.name)
        return os.path.join(directory, variant, *([f"seed_{k}"] if k else []), stage.name)

    runs, seen = [], set()
    for k in range(study.seeds):  # every variant's seed 0 first: one seed's results come soonest
        for variant in study.variants:
            for stage in study.stages:
                wd = workdir(variant.name, stage, k)
                if wd in seen:
                    continue
                seen.add(wd)
                over = dict(stage.overrides)
                if not stage.shared:
                    over.update(variant.overrides.get("all", {}))
                    over.update(variant.overrides.get(stage.name, {}))
                over.update(extra.get("all", {}))
                over.update(extra.get(stage.name, {}))
                if k and not stage.shared:
                    over["seed"] = _base_seed(over, variant.name, stage) + k
                after: tuple[str, ...] = ()
                if stage.init_from:
                    source = workdir(variant.name, study.stage(stage.init_from), k)
                    over["init_from"] = source
                    after = (source,)
                runs.append(Run(SHARED if stage.shared else variant.name, stage, wd, over, after,
                                0 if stage.shared else k))
    return runs


def _base_seed(overrides: dict[str, Any], variant: str, stage: Stage) -> int:
    """The config seed the run's overrides set (the recipes' own is 0: configs/common.py)."""
    value = overrides.get("seed", 0)
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StudyError(f"{variant}/{stage.name}: seed={value!r} is not an integer") from None


def check_seed(run: Run, config) -> None:
    """Raises StudyError where `--seeds` would repeat a seed: the runs k >= 1 count from the
    seed the overrides set, else from 0, so a recipe (resolved `config`) seeding with another
    value must get it as an override."""
    if run.seed == 0 and "seed" not in run.overrides and int(config.seed) != 0:
        raise StudyError(f"{run.label}: its recipe sets seed={config.seed}, and the seeds count from 0 unless "
                         f"the study overrides seed: add it to the stage's overrides (or --set={run.stage.name}.seed=...)")


def command(run: Run, repo_root: str, python: str = sys.executable) -> list[str]:
    """The run's `python train.py ...` as an argument list (absolute paths: it runs anywhere)."""
    path, colon, arg = run.stage.config.partition(":")
    config = (path if os.path.isabs(path) else os.path.join(repo_root, path)) + colon + arg
    argv = [python, os.path.join(repo_root, "train.py"), f"--config={config}", f"--workdir={run.workdir}"]
    argv += [f"--config.{k}={format_value(v)}" for k, v in run.overrides.items()]
    return argv


def shell_line(argv: list[str]) -> str:
    return shlex.join(["python", *argv[1:]])


def _checkpoint_steps(workdir: str) -> list[int]:
    folder = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(folder):
        return []
    return sorted(int(n) for n in os.listdir(folder) if n.isdigit())


def total_steps(workdir: str) -> int | None:
    """The run's total_steps as its workdir's config.json records it (None before it started)."""
    try:
        with open(os.path.join(workdir, "config.json")) as f:
            return int(json.load(f)["total_steps"])
    except (OSError, ValueError, KeyError):
        return None


def status(run: Run) -> str:
    """'done' (its last checkpoint is there), 'partial' (it started: rerunning resumes) or 'new'."""
    total, steps = total_steps(run.workdir), _checkpoint_steps(run.workdir)
    if total is not None and total in steps:
        return "done"
    return "partial" if total is not None or steps else "new"


def recorded_command(run: Run) -> list[str] | None:
    try:
        with open(os.path.join(run.workdir, "study_run.json")) as f:
            return json.load(f)["command"]
    except (OSError, ValueError, KeyError):
        return None


class RunFailed(RuntimeError):
    """A run's train.py exited non-zero; the message names it, its exit status and its log."""

    def __init__(self, run: Run, returncode: int, log_path: str):
        tail = ""
        try:
            with open(log_path, errors="replace") as f:
                lines = [x.strip() for x in f.read().replace("\r", "\n").splitlines() if x.strip()]
            tail = lines[-1] if lines else ""
        except OSError:
            pass
        super().__init__(f"{run.label} failed (exit {returncode}; {log_path}): {tail}")
        self.returncode = returncode


def execute(run: Run, repo_root: str, *, echo: bool = False) -> float:
    """Runs (or resumes) one run to its end; returns its wall time in seconds. Output goes to
    WORKDIR/train.log (and to this process's stdout with `echo`)."""
    os.makedirs(run.workdir, exist_ok=True)
    argv = command(run, repo_root)
    log_path = os.path.join(run.workdir, "train.log")
    start = time.time()
    with open(log_path, "a") as log:
        log.write(f"$ {shell_line(argv)}\n")
        log.flush()
        proc = subprocess.Popen(argv, cwd=repo_root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            log.write(line)
            if echo:
                sys.stdout.write(line)
        rc = proc.wait()
    wall = time.time() - start
    if rc != 0:
        raise RunFailed(run, rc, log_path)
    with open(os.path.join(run.workdir, "study_run.json"), "w") as f:
        json.dump({"command": argv[1:], "wall_s": round(wall, 1)}, f, indent=1)
    return wall


def resolve_config(run: Run, repo_root: str):
    """The ConfigDict the run's train.py command would train with, parsed as train.py parses
    it, without running anything (so a study checks every run before the first starts).
    Raises StudyError (one line) for a key the recipe lacks or a value of the wrong type."""
    from absl import flags
    from ml_collections import config_flags

    from mir_jax.train.config_check import load_recipe, register_list_overrides, unknown_key

    register_list_overrides()
    argv = command(run, repo_root)
    if repo_root not in sys.path:
        sys.path.insert(0, repo_root)  # the recipes import `configs.common`
    try:
        base = load_recipe(argv[2][len("--config="):])
    except Exception as e:  # noqa: BLE001 -- a broken or missing recipe: one line
        raise StudyError(f"{run.label}: config {run.stage.config!r} does not load: {type(e).__name__}: {e}") from e
    for key in run.overrides:
        problem = unknown_key(base, key)
        if problem:
            raise StudyError(f"{run.label}: {problem}")
    args = [argv[1], *[a for a in argv[2:] if not a.startswith("--workdir=")]]
    fv = flags.FlagValues()
    holder = config_flags.DEFINE_config_file("config", None, "recipe", flag_values=fv, lock_config=True,
                                             sys_argv=args)
    try:
        fv(args)
    except (flags.Error, KeyError, AttributeError, TypeError, ValueError) as e:
        message = " ".join(str(e).split())
        raise StudyError(f"{run.label}: {message}") from e
    return holder.value
