"""The training loop's evaluations: each entry of `config.evals` is an evaluator of the registry
(`mir_jax.evals`) run every `every` steps (0: only at the end; all run at the end) on the
fixed record set it builds before the first step, e.g.
`{"mir": {"every": 100, "num_samples": 32}, "caption_4shot": {"evaluator": "caption", "shots": 4}}`.
Held-out measurements (loss, MIR) run sharded in every process and log rows of split "eval";
the others generate on process 0 and log split "downstream" rows, with their answer files in
WORKDIR/evals/step_N/.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any

from tqdm import tqdm

from mir_jax.train.config_check import ConfigError


@dataclasses.dataclass
class LoopEval:
    """One entry of `config.evals`: its key (the name of its results), every, the evaluator."""

    key: str
    every: int
    evaluator: Any  # mir_jax.evals.Evaluator

    @property
    def held_out(self) -> bool:
        return self.evaluator.split == "eval"


def loop_evals(config, data_parallel: int, process_count: int) -> list[LoopEval]:
    """The evaluators of `config.evals` with what their entries leave to the run (the held-out
    loss reads the run's held-out split; `Evaluator.loop_options`). ConfigError (one line) for a
    generation batch that does not split over the data-parallel shards."""
    from mir_jax.evals import build_evals

    try:
        entries = [LoopEval(*e) for e in build_evals(config.get("evals"), run_config=config)]
    except ValueError as e:
        raise ConfigError(str(e)) from e
    for e in entries:  # generation shards its batches like training's
        bs = int(e.evaluator.options.get("batch_size") or 0)
        if not e.held_out and process_count == 1 and bs % data_parallel:
            raise ConfigError(f"evals.{e.key}: batch_size={bs} does not split over the "
                              f"{data_parallel} data-parallel shards")
    return entries


def eval_handle(setup, model, mesh, step: int):
    """The trained model as evaluators take it: the run's tokenizer, image preprocessing and
    the prompt template of its training data."""
    from mir_jax.evals import EvalModel
    from mir_jax.evals.loading import run_image_config, training_template

    template, system = training_template(setup.config.data)
    image = run_image_config(setup.config, setup.model_config)
    return EvalModel(f"step_{step}", model, setup.tokenizer, image, template, system, mesh, setup.workdir)


def host_model(setup, state, frozen):
    """(model, mesh) to run host-driven evaluation (generation) on: the sharded model and the
    run's mesh on one process; with several processes the parameters are gathered (a
    collective: every process must call this) and process 0 alone gets (model, None), the
    others (None, None)."""
    if setup.process_count > 1:
        from jax.experimental import multihost_utils

        state, frozen = multihost_utils.process_allgather((state, frozen), tiled=True)
        if setup.process_index:
            return None, None
        return setup.stepper.model(state, frozen), None
    return setup.stepper.model(state, frozen), setup.mesh


def format_bad_samples(summary: dict) -> str:
    """One line from `BadSampleStats.summary()` ({source: {"seen", "bad", "reasons"}}), e.g.
    "bad samples: llava 3 of 410 (missing_image 2, too_long 1), synthetic_text 0 of 96"."""
    parts = []
    for name, s in summary.items():
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(s["reasons"].items(), key=lambda kv: -kv[1]))
        parts.append(f"{name} {s['bad']} of {s['seen']}" + (f" ({reasons})" if reasons else ""))
    return "bad samples: " + ", ".join(parts)


class Evaluations:
    """The loop's evaluations (`setup.evals`) and their reports: each round writes its metrics
    rows (when given a writer), prints its lines (process 0) and keeps the latest values in
    `result` (a `TrainResult`: `eval`, `downstream`) and `last` ({key: EvalResult})."""

    def __init__(self, setup, state, frozen, writer=None, result=None):
        self.setup, self.writer, self.result = setup, writer, result
        self.entries: list[LoopEval] = setup.evals
        self.main = setup.process_index == 0
        self.last: dict[str, Any] = {}
        handle = eval_handle(setup, setup.stepper.model(state, frozen), setup.mesh, 0)
        for e in self.entries:  # the fixed record sets, before the first step
            try:
                e.evaluator.prepare(handle)
            except ValueError as err:  # DataError (not a ValueError) passes as it is: one line too
                raise ConfigError(f"evals.{e.key}: {err}") from err

    def say(self, text: str) -> None:
        if self.main:
            tqdm.write(text)  # above the progress bar

    def _write(self, step: int, split: str, row: dict) -> None:
        if self.writer is not None:
            self.writer.write(step, split, row)

    def held_out(self, step: int, state, frozen, entries=None) -> dict[str, Any]:
        """The held-out entries (default: all) on the sharded model, in every process: their
        "eval" row ({} without any)."""
        entries = [e for e in (self.entries if entries is None else entries) if e.held_out]
        if not entries:
            return {}
        t = time.perf_counter()
        handle = eval_handle(self.setup, self.setup.stepper.model(state, frozen), self.setup.mesh, step)
        row, shown = {}, []
        for e in entries:
            out = e.evaluator.run(handle)
            self.last[e.key] = out
            row.update(e.evaluator.metrics(out, e.key))
            shown.append(e.evaluator.report(out, e.key))
        self._write(step, "eval", row)
        self.say(f"step {step}: eval {' '.join(shown)} ({time.perf_counter() - t:.1f}s)")
        if self.result is not None:
            self.result.eval = row
        return row

    def downstream(self, step: int, state, frozen, entries) -> dict[str, float]:
        """The generating entries: gathered parameters, process 0 (every process must call
        this); {"KEY/score": value}, their files in WORKDIR/evals/step_N/."""
        from mir_jax.evals import write_result

        entries = [e for e in entries if not e.held_out]
        if not entries:
            return {}
        t = time.perf_counter()
        model, mesh = host_model(self.setup, state, frozen)
        if model is None:
            return {}
        handle = eval_handle(self.setup, model, mesh, step)
        scores, shown, blocks = {}, [], []
        for e in entries:
            out = e.evaluator.run(handle)
            out.evaluator = e.key  # files and metrics are named by the entry's key
            self.last[e.key] = out
            write_result(out, os.path.join(self.setup.workdir, "evals", f"step_{step}"))
            scores.update(e.evaluator.metrics(out, e.key))
            text = e.evaluator.report(out, e.key)
            (blocks if "\n" in text else shown).append(text)  # sample captions: lines of their own
        if scores:
            self._write(step, "downstream", scores)
            if self.result is not None:
                self.result.downstream.update(scores)
        if shown:
            self.say(f"step {step}: {' '.join(s for s in shown if s)} ({time.perf_counter() - t:.1f}s)")
        for text in blocks:
            self.say(text)
        return scores

    def bad_samples(self, step: int) -> None:
        # This host's counts (its slice of the stream), cumulative over resumes: they live in
        # the data iterator's checkpointed state.
        summary = self.setup.train_iter.bad_samples
        self._write(step, "data", {"bad_samples": summary})
        self.say(f"step {step}: {format_bad_samples(summary)}")

    def run(self, step: int, state, frozen, entries) -> None:
        """One round: the held-out entries, the generating ones, the bad-sample counts."""
        self.held_out(step, state, frozen, entries)
        self.downstream(step, state, frozen, entries)
        self.bad_samples(step)

    def during_training(self, step: int, state, frozen) -> None:
        """Whatever is due at `step` (before the last one)."""
        due = [e for e in self.entries if e.every and step % e.every == 0]
        if due:
            self.run(step, state, frozen, due)

    def at_end(self, step: int, state, frozen) -> None:
        """Every entry, and the bad-sample counts."""
        self.run(step, state, frozen, self.entries)

    def mir_tables(self) -> list[str]:
        """The per-layer table of each MIR entry's latest evaluation (headed by its key when it
        is not "mir")."""
        out = []
        for e in self.entries:
            if e.evaluator.name == "mir" and e.key in self.last:
                table = self.last[e.key].details["evaluation"].format()
                out.append(table if e.key == "mir" else f"{e.key}:\n{table}")
        return out
