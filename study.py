r"""Run a paper's experiment: every variant of a study through its stages, then MIR, scores
and their rank correlation, as one command.

    python study.py --study=configs/studies/mir_vs_sft.py:runlocal --workdir=/tmp/mir_vs_sft

Each run is an ordinary training workdir, DIR/VARIANT/STAGE (DIR/shared/STAGE for a stage
the whole study shares); with --seeds=N (or a study's `seeds`) each variant's non-shared stages
run N times, with --config.seed = base + k, the k >= 1 ones in DIR/VARIANT/seed_K/STAGE, and
study.json adds each seed's values, the spread and bootstrap intervals of the correlations.
Rerunning the same command skips finished runs and resumes
interrupted ones. --print_commands prints every run's train.py command instead (submit them
as separate jobs, in the order printed), and --collect assembles the results of finished
workdirs without running anything. Results in DIR: study.json (schema:
mir_jax/studies/collect.py), study.md, mir_vs_score.png, mir_per_layer.png (and mir_norms.png
where the runs logged the hidden states' norms).

--set=STAGE.KEY=VALUE (repeatable; STAGE a stage name or "all") adds an override to every run
of that stage, e.g. the paths a full-size study needs:
    --set=stage1.init_from=/ckpt/llava-stage1-start --set=all.tokenizer=/ckpt/vicuna-7b-v1.5

Exit status: 0 all runs done and collected; 1 a bad study or a failed run (one line each;
the other variants still run); 143 a run was stopped by SIGTERM (rerun to resume).
"""

from __future__ import annotations

import json
import os
import sys
import time

from absl import app, flags

_STUDY = flags.DEFINE_string("study", None, "configs/studies/NAME.py[:ARG].")
_WORKDIR = flags.DEFINE_string("workdir", None, "Every run's workdir and the results go here.")
_PRINT = flags.DEFINE_bool("print_commands", False, "Print each run's command; run nothing.")
_COLLECT = flags.DEFINE_bool("collect", False, "Assemble results from finished workdirs; run nothing.")
_SET = flags.DEFINE_multi_string("set", [], "STAGE.KEY=VALUE: an override for every run of STAGE (or all).")
_SEEDS = flags.DEFINE_integer("seeds", None, "Run each variant's non-shared stages this many times, with config "
                               "seeds base+0 .. base+N-1 (default: the study's `seeds`, else 1).", lower_bound=1)
_ECHO = flags.DEFINE_bool("echo", False, "Also stream each run's output here (it always goes to WORKDIR/train.log).")
flags.mark_flags_as_required(["study", "workdir"])

REPO = os.path.dirname(os.path.abspath(__file__))


def _summary(result: dict) -> str:
    corr = result["correlation"]

    def f(c, name):
        x, ci = c[name], (c.get("interval") or {}).get(name)
        text = "n/a" if x is None else f"{x:+.3f}"
        return text + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")

    return (f"MIR vs score: Spearman {f(corr['mir'], 'spearman')}, Kendall {f(corr['mir'], 'kendall')}; "
            f"loss vs score: Spearman {f(corr['loss'], 'spearman')}, Kendall {f(corr['loss'], 'kendall')}")


def _run(runs, directory: str, handled: set, failed: dict) -> None:
    """Runs every run of `runs` not yet handled in this invocation, in order; a failed run is
    recorded in `failed` (workdir -> why) and the runs that start from it are skipped."""
    from mir_jax import studies

    todo = [r for r in runs if r.workdir not in handled]
    start = time.time()
    for i, run in enumerate(todo, 1):
        handled.add(run.workdir)
        head = f"[{i}/{len(todo)}] {run.label}"
        blocked = [w for w in run.after if w in failed]
        if blocked:
            failed[run.workdir] = "its source failed"
            print(f"{head}: skipped, its source {os.path.relpath(blocked[0], directory)} failed", flush=True)
            continue
        state = studies.status(run)
        if state == "done":
            recorded = studies.runs.recorded_command(run)
            note = ("" if recorded in (None, studies.command(run, REPO)[1:])
                    else " (its study_run.json records a different command: delete the workdir to rerun)")
            print(f"{head}: done, skipped{note}", flush=True)
            continue
        print(f"{head}: {'resuming' if state == 'partial' else 'running'} -> {run.workdir}", flush=True)
        try:
            wall = studies.execute(run, REPO, echo=_ECHO.value)
        except studies.RunFailed as e:
            if e.returncode == 143:
                sys.exit(f"study.py: {e}; rerun the same command to resume")
            failed[run.workdir] = str(e)
            print(f"{head}: FAILED: {e}", flush=True)
            continue
        print(f"{head}: done in {wall:.0f}s ({time.time() - start:.0f}s so far)", flush=True)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from mir_jax import studies

    try:
        study = studies.load(_STUDY.value, REPO)
        if _SEEDS.value is not None:
            study = studies.with_seeds(study, _SEEDS.value)
        extra = studies.parse_set(_SET.value)
    except studies.StudyError as e:
        sys.exit(f"study.py: {e}")
    directory = os.path.abspath(_WORKDIR.value)
    failed: dict[str, str] = {}  # workdir -> why
    handled: set[str] = set()
    printed = 0
    # Rounds: the study's variants, then (for a study with `derive`) the variants its results
    # so far call for, until there are no new ones.
    while True:
        try:
            runs = studies.plan(study, directory, extra)
            for run in runs:  # every run's overrides parse, before any of them starts
                if run.workdir not in handled:
                    config = studies.runs.resolve_config(run, REPO)
                    if study.seeds > 1 and run.variant != studies.runs.SHARED:
                        studies.runs.check_seed(run, config)
        except studies.StudyError as e:
            sys.exit(f"study.py: {e}")
        if _PRINT.value:
            for run in runs[printed:]:
                print(studies.shell_line(studies.command(run, REPO)))
            printed = len(runs)
        elif not _COLLECT.value:
            os.makedirs(directory, exist_ok=True)
            _run(runs, directory, handled, failed)
        result = studies.collect(study, runs)
        try:
            grown = studies.with_derived(study, {v["name"]: v for v in result["variants"]})
        except studies.StudyError as e:
            sys.exit(f"study.py: {e}")
        if grown is study:
            break
        study = grown
    if _PRINT.value:
        if study.derive is not None:
            print("# this study adds variants from these runs' scores: rerun --print_commands once they finish")
        return
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "study.json"), "w") as f:
        json.dump(result, f, indent=1)
    written = studies.report.write(result, directory)
    print(f"study.py: {study.name}: {len(study.variants)} variants; {_summary(result)}")
    print("wrote " + ", ".join(os.path.relpath(p, directory) for p in [os.path.join(directory, "study.json"), *written]))
    missing = [v["name"] for v in result["variants"] if v["score"] is None]
    if failed or (missing and _COLLECT.value):
        why = "; ".join(failed.values()) if failed else f"no score yet for {missing}"
        sys.exit(f"study.py: incomplete: {why}")


if __name__ == "__main__":
    app.run(main)
