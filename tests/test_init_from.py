"""Stage chaining: `init_from` takes our own workdirs (latest or WORKDIR@STEP) as well as HF
directories, whole or in parts (`init_parts`), with MoCa added on top; the weights are compared
with the arrays orbax wrote, read back without our code."""

from __future__ import annotations

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import train_fixtures as fx
from flax import nnx

from mir_jax.config_check import ConfigError
from mir_jax.train.loop import Setup, train_and_evaluate


def _flat(tree) -> dict[str, np.ndarray]:
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    # "/"-joined names (orbax's restored tree spells some levels "a.b").
    return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path).replace(".", "/"):
            np.asarray(v) for path, v in leaves}


def _saved_params(workdir, step) -> dict[str, np.ndarray]:
    """Trainable + frozen parameters of a checkpoint, as orbax stored them."""
    ckpt = ocp.StandardCheckpointer()
    state = ckpt.restore(str(workdir / "checkpoints" / str(step) / "state"))
    frozen = ckpt.restore(str(workdir / "checkpoints" / str(step) / "frozen"))
    return {**_flat(state["params"]), **_flat(frozen)}


def _start_params(config, workdir) -> dict[str, np.ndarray]:
    setup = Setup(config, str(workdir))
    try:
        _, state, frozen = setup.initial_state()
        params = setup.stepper.partition.combine(state["params"], frozen)
        return _flat(nnx.to_pure_dict(jax.device_get(params)))
    finally:
        setup.checkpointer.close()


@pytest.fixture(scope="module")
def stage1(tmp_path_factory):
    """A connector-only run of 4 steps with checkpoints at steps 2 and 4."""
    workdir = tmp_path_factory.mktemp("stage1")
    c = fx.tiny_train_config(total_steps=4)
    c.checkpoint.every = 2
    c.trainable.llm = "none"
    train_and_evaluate(c, str(workdir))
    return workdir


def _stage2(**top):
    c = fx.tiny_train_config(total_steps=2, **top)
    c.trainable.llm = "all"
    return c


def test_whole_workdir_latest_and_at_a_step(stage1, tmp_path):
    saved = {s: _saved_params(stage1, s) for s in (2, 4)}
    assert any(not np.array_equal(saved[2][k], saved[4][k]) for k in saved[4])  # the connector moved
    for spec, step in ((str(stage1), 4), (f"{stage1}@2", 2)):
        got = _start_params(_stage2(init_from=spec), tmp_path / f"run{step}")
        assert got.keys() == saved[step].keys()
        for k in got:
            np.testing.assert_array_equal(got[k], saved[step][k], err_msg=k)


def test_parts_fresh_connector_and_moca_added(stage1, tmp_path):
    saved = _saved_params(stage1, 4)
    fresh = _start_params(_stage2(init_from=""), tmp_path / "fresh")
    got = _start_params(_stage2(init_from=str(stage1), init_parts="vision,llm"), tmp_path / "parts")
    for k in got:
        want = fresh if k.startswith("connector/") else saved
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert any(k.startswith("connector/") for k in got)

    moca = _stage2(init_from=str(stage1))
    moca.model.moca, moca.trainable.moca = True, True
    got = _start_params(moca, tmp_path / "moca")
    moca_keys = [k for k in got if "moca" in k]
    assert moca_keys and not any(k in saved for k in moca_keys)  # MoCa starts fresh ...
    for k in got:
        if k not in moca_keys:
            np.testing.assert_array_equal(got[k], saved[k], err_msg=k)  # ... on the stage-1 weights


def test_bad_init_from_is_one_line(stage1, tmp_path):
    cases = [(dict(init_from=str(stage1), init_parts="vison"), "init_parts='vison': unknown part(s) ['vison']"),
             (dict(init_from=f"{stage1}@99"), "does not load"),
             (dict(init_from=str(tmp_path / "nope@3")), "does not exist")]
    for top, message in cases:
        with pytest.raises(ConfigError) as e:
            _start_params(_stage2(**top), tmp_path / "bad")
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    wide = _stage2(init_from=str(stage1), init_parts="vision")
    wide.model.text.hidden_size = 64  # the LLM is not taken: only the vision config must agree
    _start_params(wide, tmp_path / "wide")
    wide.init_parts = "llm"
    with pytest.raises(ConfigError, match="model.text.hidden_size: 32 there, 64 here"):
        _start_params(wide, tmp_path / "wide2")
