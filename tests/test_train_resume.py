"""Exact resume (params, optimizer, data stream), stop signals, config errors and the CLI."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from mir_jax.train.loop import Setup, train_and_evaluate
from mir_jax.train.metrics import read_jsonl
from mir_jax.weights.checkpoint import Checkpointer, StopSignal
from tests import train_fixtures as fx


def _losses(workdir):
    rows = [r for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == "train"]
    return [r["step"] for r in rows], np.array([r["loss"] for r in rows])


def _final_state(workdir, config):
    setup = Setup(config, workdir)
    try:
        abstract_state, abstract_frozen = setup.stepper.abstract_state()
        step, state, frozen, saved_config = setup.checkpointer.restore(
            abstract_state, abstract_frozen, setup.train_iter)
        return step, jax.device_get(state), jax.device_get(frozen), setup.train_iter.get_state(), saved_config
    finally:
        setup.checkpointer.close()


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_six_steps_equal_three_stop_and_three_resumed(tmp_path):
    config = fx.tiny_train_config(mesh=(4, 2, 1))  # fsdp: the checkpoint holds sharded arrays
    straight, split = str(tmp_path / "straight"), str(tmp_path / "split")
    train_and_evaluate(config, straight)
    first = train_and_evaluate(config, split, stop_at_step=3)
    assert first.preempted and first.step == 3
    assert Checkpointer(os.path.join(split, "checkpoints")).latest_step() == 3
    train_and_evaluate(config, split)  # the same call again: resumes from step 3

    steps_a, loss_a = _losses(straight)
    steps_b, loss_b = _losses(split)
    assert steps_a == steps_b == [1, 2, 3, 4, 5, 6]  # the resumed log has no duplicate steps
    # Steps 4-6 see the same batches only if the data position was restored exactly.
    np.testing.assert_allclose(loss_b, loss_a, rtol=0, atol=1e-6)
    assert loss_a[-1] < loss_a[0]
    step_a, state_a, frozen_a, data_a, cfg_a = _final_state(straight, config)
    step_b, state_b, frozen_b, data_b, _ = _final_state(split, config)
    assert step_a == step_b == 6 and int(state_a["step"]) == int(state_b["step"]) == 6
    for a, b in zip(jax.tree.leaves(state_a), jax.tree.leaves(state_b)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=0, atol=1e-6)
    for k in frozen_a:
        assert np.array_equal(frozen_a[k], frozen_b[k])
    assert data_a == data_b
    assert cfg_a["total_steps"] == 6
    for name in ("metrics.jsonl", "loss_mir.png", "config.json"):
        assert os.path.exists(os.path.join(straight, name)), name
    assert any(f.startswith("events.out.tfevents") for f in os.listdir(os.path.join(straight, "tensorboard")))


def test_sigterm_sets_the_stop_flag_instead_of_killing():
    stop = StopSignal()
    try:
        assert not stop
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop and stop.received == signal.SIGTERM
    finally:
        stop.restore()
    assert signal.getsignal(signal.SIGTERM) is not stop._handle


@pytest.mark.parametrize("overrides, message", [
    ({"mesh": (3, 1, 1)}, "does not divide the 8 available devices"),
    ({"mesh": (8, 1, 1), "batch_size": 12}, "not divisible by the 8 data-parallel shards"),
    ({"trainable": {"connector": True, "llm": "sometimes", "vision": "none", "moca": True}},
     "trainable.llm='sometimes'"),
])
def test_bad_config_is_a_clear_error_before_compiling(tmp_path, overrides, message):
    config = fx.tiny_train_config(**overrides)
    with pytest.raises(ValueError, match=message):
        Setup(config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")  # failed before building anything


@pytest.mark.slow
def test_cli_rejects_unknown_override_keys(tmp_path):
    for override, message in [("--config.optimizer.lrr=1", "unknown config key 'optimizer.lrr'"),
                              ("--config.nonexistent=1", "unknown config key 'nonexistent'")]:
        proc = subprocess.run(
            [sys.executable, os.path.join(fx.ROOT, "train.py"), "--config=configs/mm1_mix.py:runlocal",
             f"--workdir={tmp_path}", override],
            cwd=fx.ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode != 0
        assert message in proc.stderr, proc.stderr[-2000:]
        assert "known:" in proc.stderr
