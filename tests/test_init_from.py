"""Stage chaining: `init_from` takes our own workdirs (latest or WORKDIR@STEP) as well as HF
directories, whole or in parts (`init_parts`), with MoCa added on top; the weights are compared
with the arrays orbax wrote, read back without our code."""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest
from flax import nnx

from mir_jax.models.forward import forward
from mir_jax.train.config_check import ConfigError
from mir_jax.train.loop import Setup
from tests import train_fixtures as fx
from tests.helpers import flat_params, saved_params, start_params


def _stage2(**top):
    c = fx.tiny_train_config(total_steps=2, **top)
    c.trainable.llm = "all"
    return c


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_whole_workdir_latest_and_at_a_step(stage1, tmp_path):
    saved = {s: saved_params(stage1, s) for s in (2, 4)}
    assert any(not np.array_equal(saved[2][k], saved[4][k]) for k in saved[4])  # the connector moved
    for spec, step in ((str(stage1), 4), (f"{stage1}@2", 2)):
        got = start_params(_stage2(init_from=spec), tmp_path / f"run{step}")[0]
        assert got.keys() == saved[step].keys()
        for k in got:
            np.testing.assert_array_equal(got[k], saved[step][k], err_msg=k)


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_parts_fresh_connector_and_moca_added(stage1, tmp_path):
    saved = saved_params(stage1, 4)
    fresh = start_params(_stage2(init_from=""), tmp_path / "fresh")[0]
    got = start_params(_stage2(init_from=str(stage1), init_parts="vision,llm"), tmp_path / "parts")[0]
    for k in got:
        want = fresh if k.startswith("connector/") else saved
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert any(k.startswith("connector/") for k in got)

    moca = _stage2(init_from=str(stage1))
    moca.model.moca, moca.trainable.moca = True, True
    got = start_params(moca, tmp_path / "moca")[0]
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
            start_params(_stage2(**top), tmp_path / "bad")[0]
        assert message in str(e.value) and "\n" not in str(e.value), str(e.value)
    wide = _stage2(init_from=str(stage1), init_parts="vision")
    wide.model.text.hidden_size = 64  # the LLM is not taken: only the vision config must agree
    start_params(wide, tmp_path / "wide")[0]
    wide.init_parts = "llm"
    with pytest.raises(ConfigError, match="model.text.hidden_size: 32 there, 64 here"):
        start_params(wide, tmp_path / "wide2")[0]


# ---------------------------------------------------------------------------------------------
# Every connector and MoCa: a model started from one of our workdirs computes exactly the
# source's logits. The source is a real workdir: a Setup's fresh state, perturbed (every
# parameter, so zero-initialized biases, c_abstractor's zero last convs and MoCa's identity
# matter too) and saved through the trainer's Checkpointer at steps 1 and 2.
# ---------------------------------------------------------------------------------------------
CONNECTORS = {
    "linear": (dict(name="linear"), False),
    "avgpool": (dict(name="avgpool", num_tokens=4), False),
    "attnpool": (dict(name="attnpool", num_tokens=4, num_heads=2), False),
    "c_abstractor": (dict(name="c_abstractor", num_tokens=4, depth=1), False),
    "mlp2x_gelu+moca": (dict(name="mlp2x_gelu"), True),  # LLaVA's connector, with MoCa's parameters
}


def _connector_config(kind, *, stage, **top):
    """Stage 1 (the source: connector and MoCa trained) or stage 2 (the target: everything)."""
    from mir_jax.models import ConnectorConfig

    connector, moca = CONNECTORS[kind]
    c = fx.tiny_train_config(total_steps=2, **top)
    c.model = fx.tiny_model_config(connector=ConnectorConfig(**connector), moca=moca, moca_std=0.0).to_dict()
    c.trainable.llm = "none" if stage == 1 else "all"
    c.trainable.moca = moca
    c.checkpoint.every = 1
    return c


def _host(tree):
    return jax.tree.map(np.asarray, jax.device_get(tree))


_COMPILED = {}


def _logits(graphdef, params, batch) -> np.ndarray:
    """Logits of host parameters, computed one way for every model compared: one device, one
    program per model structure (compiled without backend optimizations: XLA:CPU takes seconds
    to optimize even this tiny model)."""
    params = _host(params)
    if graphdef not in _COMPILED:
        fn = jax.jit(lambda p, b: forward(nnx.merge(graphdef, p), b).logits)
        _COMPILED[graphdef] = fn.lower(params, batch).compile(
            compiler_options={"xla_backend_optimization_level": 0})
    return np.asarray(_COMPILED[graphdef](params, batch))


def _perturbed(tree, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(
        lambda x: jax.device_put(np.asarray(x) + 0.05 * rng.standard_normal(x.shape).astype(x.dtype), x.sharding),
        tree)


class _Source:
    """A stage-1 workdir of `kind` with perturbed weights saved at steps 1 and 2: the parameters
    (host) of the fresh init and of each saved step, a fixed batch, the model structure."""

    def __init__(self, kind, workdir):
        from mir_jax.train.loop import _plain_config

        self.workdir, config = workdir, _connector_config(kind, stage=1)
        setup = Setup(config, str(workdir))
        try:
            _, state, frozen = setup.initial_state()
            combine = setup.stepper.partition.combine
            self.graphdef = setup.stepper.graphdef
            self.fresh = _host(combine(state["params"], frozen))
            self.batch = {k: np.asarray(v)[:2] for k, v in next(setup.train_iter).items()}
            with open(workdir / "config.json", "w") as f:
                json.dump(_plain_config(config), f)
            self.saved = {}
            for step in (1, 2):
                state = dict(state, step=state["step"] + 1, params=_perturbed(state["params"], step))
                frozen = _perturbed(frozen, 10 + step)
                assert setup.checkpointer.save(step, state, frozen, setup.train_iter, _plain_config(config))
                self.saved[step] = _host(combine(state["params"], frozen))
            setup.checkpointer.wait()
        finally:
            setup.checkpointer.close()
        assert sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["1", "2"]


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    made = {}

    def get(kind):
        if kind not in made:
            made[kind] = _Source(kind, tmp_path_factory.mktemp(kind.replace("+", "_")))
        return made[kind]

    return get


def _start(config, workdir):
    """(graphdef, host parameters) a stage-2 run starts from."""
    setup = Setup(config, str(workdir))
    try:
        _, state, frozen = setup.initial_state()
        return setup.stepper.graphdef, _host(setup.stepper.partition.combine(state["params"], frozen))
    finally:
        setup.checkpointer.close()


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
@pytest.mark.parametrize("kind", list(CONNECTORS))
def test_every_connector_and_moca_reproduce_the_logits(kind, sources, tmp_path):
    src = sources(kind)
    want = _logits(src.graphdef, src.saved[2], src.batch)
    fresh = _logits(src.graphdef, src.fresh, src.batch)
    assert np.all(np.isfinite(want)) and not np.array_equal(want, fresh)  # the test can fail
    config = _connector_config(kind, stage=2, init_from=str(src.workdir), init_parts="all")
    graphdef, params = _start(config, tmp_path / "latest")
    np.testing.assert_array_equal(_logits(graphdef, params, src.batch), want)
    if kind == "c_abstractor":  # WORKDIR@STEP: the older checkpoint, exactly
        at1 = _logits(src.graphdef, src.saved[1], src.batch)
        assert not np.array_equal(at1, want)
        graphdef, params = _start(_connector_config(kind, stage=2, init_from=f"{src.workdir}@1"), tmp_path / "at1")
        np.testing.assert_array_equal(_logits(graphdef, params, src.batch), at1)


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_vision_and_llm_taken_connector_fresh(sources, tmp_path):
    kind = "attnpool"
    src = sources(kind)
    config = _connector_config(kind, stage=2, init_from=str(src.workdir), init_parts="vision,llm")
    graphdef, params = _start(config, tmp_path / "parts")
    got, saved, fresh = (flat_params(nnx.to_pure_dict(p)) for p in (params, src.saved[2], src.fresh))
    assert got.keys() == saved.keys() == fresh.keys()
    assert {k.split("/")[0] for k in got} == {"vision_tower", "connector", "language_model"}
    for k in got:
        want = fresh if k.startswith("connector/") else saved
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        assert not np.array_equal(fresh[k], saved[k]), k  # every parameter tells the two apart
    # The logits of that composition: source vision tower and LLM around a fresh connector.
    mixed = jax.tree_util.tree_map_with_path(lambda path, s, f: f if path[0].key == "connector" else s,
                                             src.saved[2], src.fresh)
    np.testing.assert_array_equal(_logits(graphdef, params, src.batch), _logits(src.graphdef, mixed, src.batch))
