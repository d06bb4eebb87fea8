"""Damaged checkpoints: a one-line warning naming the step and the cause, then the newest step
that restores (nothing deleted); one line when none restores or the shapes differ from the
config; evaluation's loader falls back the same way."""

from __future__ import annotations

import gc
import glob
import json
import logging
import os
import shutil
import sys

import jax
import numpy as np
import pytest

from mir_jax.evals.loading import load_model
from mir_jax.train.loop import Setup, train_and_evaluate
from mir_jax.weights import WeightsSource
from mir_jax.weights.checkpoint import (
    Checkpointer,
    CheckpointError,
    CheckpointMismatch,
    restore_newest,
)
from tests import train_fixtures as fx
from tests.helpers import run_tool


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A finished 6-step run with checkpoints at steps 3 and 6 (never modified: tests copy it)."""
    workdir = str(tmp_path_factory.mktemp("ckpt") / "run")
    train_and_evaluate(fx.tiny_train_config(), workdir)
    assert Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [3, 6]
    return workdir


def _copy(run, tmp_path) -> str:
    dst = str(tmp_path / "run")
    shutil.copytree(run, dst)
    return dst


def _files(directory) -> dict[str, int]:
    return {os.path.relpath(f, directory): os.path.getsize(f)
            for f in glob.glob(os.path.join(directory, "**"), recursive=True) if os.path.isfile(f)}


def _restore(workdir, config, step=None):
    setup = Setup(config, workdir)
    try:
        a, f = setup.stepper.abstract_state()
        s, state, frozen, _ = setup.checkpointer.restore(a, f, setup.train_iter, step=step)
        return s, jax.device_get(state), jax.device_get(frozen), setup.train_iter.get_state()
    finally:
        setup.checkpointer.close()


def _truncate_largest_array_file(step_dir):
    """Empty the state item's largest array file (halving it is not enough: which arrays sit in
    its second half depends on orbax's write order, and a restore may not need any of them)."""
    f = max(glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")), key=os.path.getsize)
    os.truncate(f, 0)


def _truncate_every_array_file(step_dir, keep: float = 0.5):
    """Damage every array file of the state item to `keep` of its size. keep=0 reaches the
    parameters for sure: a halved file can still hold every parameter (orbax's write order
    varies), and the evaluation loader, which reads only the parameters, rightly restores it."""
    for f in glob.glob(os.path.join(step_dir, "state", "ocdbt.process_0", "d", "*")):
        os.truncate(f, int(os.path.getsize(f) * keep))


DAMAGE = {
    "truncated array file": (_truncate_largest_array_file, "OUT_OF_RANGE"),
    "every array file truncated": (_truncate_every_array_file, "OUT_OF_RANGE"),
    "deleted _METADATA": (lambda d: os.remove(os.path.join(d, "state", "_METADATA")), "state/_METADATA is missing"),
    "emptied data-iterator state": (lambda d: open(os.path.join(d, "data", "process_0-of-1.json"), "w").close(),
                                    "data/process_0-of-1.json is not a JSON iterator state"),
    "missing state/": (lambda d: shutil.rmtree(os.path.join(d, "state")), "state/ is missing"),
}


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
@pytest.mark.parametrize("kind", list(DAMAGE))
def test_damaged_newest_checkpoint_falls_back_to_the_previous(run, tmp_path, kind, caplog, capfd, monkeypatch):
    damage, cause = DAMAGE[kind]
    unraisable = []  # in place of pytest's hook, which would turn them into warnings
    monkeypatch.setattr(sys, "unraisablehook", unraisable.append)
    workdir = _copy(run, tmp_path)
    ckpts = os.path.join(workdir, "checkpoints")
    damage(os.path.join(ckpts, "6"))
    damaged_files = _files(os.path.join(ckpts, "6"))
    config = fx.tiny_train_config()
    with caplog.at_level(logging.WARNING, logger="mir_jax.weights.checkpoint"):
        step, state, frozen, data = _restore(workdir, config)
    assert step == 3
    # The same arrays and data position as step 3 restored from the intact run.
    _, want_state, want_frozen, want_data = _restore(run, config, step=3)
    for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(want_state), strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert data == want_data
    warnings = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith(f"checkpoint step 6 in {ckpts} does not restore (")
    assert cause in warnings[0] and warnings[0].endswith("; trying step 3")
    # Nothing deleted: the damaged step is kept, renamed so this run can write step 6 again.
    assert not os.path.exists(os.path.join(ckpts, "6"))
    assert _files(os.path.join(ckpts, "6.damaged")) == damaged_files
    # Nothing but the warning: none of the abandoned reads' tracebacks (see _quiet_abandoned_reads).
    gc.collect()
    assert [f"{type(u.exc_value).__name__}: {u.exc_value}"[:200] for u in unraisable] == []
    err = capfd.readouterr().err
    for noise in ("Traceback", "Exception ignored", "Event loop is closed"):
        assert noise not in err
    assert "exception was never retrieved" not in caplog.text


def test_other_unraisable_errors_still_reach_the_hook_during_a_restore(monkeypatch, tmp_path):
    """The filter of orbax's read noise drops nothing else: an unrelated object whose __del__
    raises while a step fails, and an unrelated asyncio error record, still come through."""
    seen, records = [], []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)

    class Handler(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    class RaisesOnDel:
        def __del__(self):
            raise ValueError("not orbax")

    def restore_one(step):
        if step == 2:
            RaisesOnDel()
            logging.getLogger("asyncio").error("Task exception was never retrieved\nfuture: <Task elsewhere>")
            raise OSError("damaged")
        return "restored"

    handler = Handler()
    logging.getLogger("asyncio").addHandler(handler)
    try:
        step, out, failed = restore_newest(tmp_path, [1, 2], restore_one)
    finally:
        logging.getLogger("asyncio").removeHandler(handler)
    assert (step, out, failed) == (1, "restored", [2])
    assert [str(u.exc_value) for u in seen] == ["not orbax"]
    assert records == ["Task exception was never retrieved\nfuture: <Task elsewhere>"]
    assert sys.unraisablehook == seen.append  # put back


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_the_resumed_run_writes_the_damaged_step_anew(run, tmp_path):
    workdir = _copy(run, tmp_path)
    ckpts = os.path.join(workdir, "checkpoints")
    os.remove(os.path.join(ckpts, "6", "state", "_METADATA"))
    result = train_and_evaluate(fx.tiny_train_config(), workdir)
    assert result.step == 6 and not result.already_done  # steps 4-6 trained again
    assert Checkpointer(ckpts).all_steps() == [3, 6]
    assert os.path.isdir(os.path.join(ckpts, "6.damaged"))
    assert os.path.exists(os.path.join(ckpts, "6", "state", "_METADATA"))  # a new step 6, whole
    step, *_ = _restore(workdir, fx.tiny_train_config())
    assert step == 6


def test_no_checkpoint_restores_is_one_line_and_deletes_nothing(run, tmp_path):
    workdir = _copy(run, tmp_path)
    ckpts = os.path.join(workdir, "checkpoints")
    for s in ("3", "6"):
        os.remove(os.path.join(ckpts, s, "state", "_METADATA"))
    before = _files(ckpts)
    with pytest.raises(CheckpointError) as e:
        _restore(workdir, fx.tiny_train_config())
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"no checkpoint in {ckpts} restores (")
    assert "step 6: CheckpointError: state/_METADATA is missing" in msg
    assert "step 3: CheckpointError: state/_METADATA is missing" in msg
    assert _files(ckpts) == before


def test_shapes_that_differ_from_the_config_are_named_in_one_line(run, tmp_path):
    """The fixture's decoder has 2 layers stacked on axis 0; the config now asks for 3."""
    config = fx.tiny_train_config(model=fx.tiny_model_config(
        text={**fx.tiny_model_config().text.__dict__, "num_layers": 3}).to_dict())
    workdir = _copy(run, tmp_path)
    with pytest.raises(CheckpointMismatch) as e:
        _restore(workdir, config)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("checkpoint step 6 does not fit the config: state.params.")
    key = msg.split("does not fit the config: ")[1].split(" has shape")[0]
    assert ".language_model.layers." in key
    saved, wanted = msg.split(" has shape ")[1].split(" in the checkpoint but ")
    wanted = wanted.split(" in the config")[0]
    saved, wanted = eval(saved), eval(wanted)  # noqa: S307 -- tuples of ints we just printed
    assert saved[0] == 2 and wanted[0] == 3 and saved[1:] == wanted[1:]
    assert os.path.isdir(os.path.join(workdir, "checkpoints", "6"))  # a mismatch is not damage


def test_evaluation_loader_falls_back_and_changes_nothing(run, tmp_path, caplog):
    workdir = _copy(run, tmp_path)
    ckpts = os.path.join(workdir, "checkpoints")
    _truncate_every_array_file(os.path.join(ckpts, "6"), keep=0)
    before = _files(ckpts)
    with caplog.at_level(logging.WARNING, logger="mir_jax.weights.checkpoint"):
        handle = load_model(workdir)
    model = handle.model
    want = load_model(run, step=3).model
    # The handle says which weights it holds: step 3, step 6 skipped as damaged.
    assert handle.weights == WeightsSource("workdir", workdir, 3, (6,))
    assert "at step 3 (newer step 6 damaged, skipped)" in handle.weights.describe()
    warnings = [r.getMessage() for r in caplog.records if "does not restore" in r.getMessage()]
    assert len(warnings) == 1 and "checkpoint step 6" in warnings[0] and "trying step 3" in warnings[0]
    from flax import nnx

    for a, b in zip(jax.tree.leaves(nnx.state(model, nnx.Param)), jax.tree.leaves(nnx.state(want, nnx.Param)),
                    strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert _files(ckpts) == before  # evaluation renames nothing


@pytest.mark.slow
def test_evaluate_cli_says_and_records_which_step_it_scored(run, tmp_path):
    """A damaged newest checkpoint: evaluate.py warns, prints the step it used, and mir.json and
    evals.json record it (and the step it skipped)."""
    workdir = _copy(run, tmp_path)
    _truncate_every_array_file(os.path.join(workdir, "checkpoints", "6"), keep=0)
    out = tmp_path / "out"
    r = run_tool("evaluate.py", f"--checkpoint={workdir}", "--evals=mir,loss", "--num_samples=4",
                 "--batch_size=4", "--seq_len=256", "--mode=exact", f"--output_dir={out}", "--noprogress")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "evaluating step 3 instead" in r.stderr and "at step 3 (newer step 6 damaged, skipped)" in r.stdout
    want = {"kind": "workdir", "path": workdir, "step": 3, "skipped_steps": [6]}
    (record,) = json.loads((out / "mir.json").read_text())["results"].values()
    assert record["weights"] == want
    evals = json.loads((out / "evals.json").read_text())
    assert list(evals["weights"].values()) == [want]
    assert evals["versions"]["jax"] == jax.__version__
