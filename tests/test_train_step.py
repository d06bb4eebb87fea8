"""The jitted train step: sharding invariance, trainable subsets, gradient accumulation, the
global token-mean loss, and skipping non-finite updates (CPU, 8 fake devices)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mir_jax.sharding import make_mesh
from mir_jax.train.step import StepConfig, Stepper, global_batch
from tests import train_fixtures as fx

Z_LOSS = 1e-2


@functools.cache
def _cached_stepper(mesh_shape, recipe, micro, z_loss, model):
    devices = jax.devices()[: int(np.prod(mesh_shape))]
    return Stepper(model, dict(recipe), fx.OPT, 100, make_mesh(mesh_shape, devices),
                   StepConfig(num_micro_batches=micro, z_loss=z_loss))


def _stepper(mesh_shape=(1, 1, 1), recipe=None, micro=1, z_loss=Z_LOSS, model=None):
    """Steppers are shared between tests (each compiles its step once: compilation is most of
    these tests' time on a CPU)."""
    recipe = tuple(sorted((recipe or {"connector": True, "llm": "all"}).items()))
    return _cached_stepper(mesh_shape, recipe, micro, z_loss, model or fx.tiny_model_config())


def _run(st, batches, steps):
    state, frozen = st.init(0)
    losses = []
    for b in batches[:steps]:
        state, m = st.train_step(state, frozen, global_batch(b, st))
        losses.append(float(m["loss"]))
    return losses, jax.device_get(state), jax.device_get(frozen)


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_same_losses_on_one_device_data8_and_2x2x2():
    batches = fx.batches()
    ref, ref_state, _ = _run(_stepper((1, 1, 1)), batches, 5)
    assert ref[-1] < ref[0] - 0.2, f"the loss should fall over 5 steps: {ref}"
    for shape in [(8, 1, 1), (2, 2, 2)]:
        losses, state, _ = _run(_stepper(shape), batches, 5)
        np.testing.assert_allclose(losses, ref, rtol=0, atol=1e-5, err_msg=f"mesh {shape}")
        for k, v in ref_state["params"].items():
            np.testing.assert_allclose(state["params"][k], v, atol=1e-5, err_msg=f"{k} on mesh {shape}")


def test_params_and_opt_state_are_created_sharded():
    st = _stepper((2, 2, 2))
    state, frozen = st.init(0)
    emb = state["params"]["language_model.embed_tokens"]  # logical (vocab, embed) -> (tensor, fsdp)
    assert emb.sharding.spec == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert {s.data.shape for s in emb.addressable_shards} == {(132, 16)}
    mu = state["opt_state"][1][0].mu["language_model.embed_tokens"]
    assert mu.sharding.spec == emb.sharding.spec


def _full_params(st, state, frozen) -> dict[str, np.ndarray]:
    """Every parameter of the model view, keyed by dotted path (independent of the partition)."""
    model = st.model(state, frozen)
    flat = nnx.to_flat_state(nnx.state(model, nnx.Param))
    return {".".join(map(str, p)): np.asarray(v.get_value()) for p, v in flat}


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_frozen_bit_identical_trainable_changed_and_no_opt_state_for_frozen():
    # A 3-layer ViT read at its penultimate layer (-2: after layer 1). Connector + LLM layer 0 +
    # ViT layers 1, 2 train; everything else (embeddings, LM head, ViT stem and layer 0, LLM
    # layer 1) is frozen.
    recipe = {"connector": True, "llm": "until:1", "vision": "from:1"}
    model = fx.tiny_model_config(vision=dict(fx.tiny_model_config().vision.__dict__, num_layers=3))
    st = _stepper((2, 1, 1), recipe, model=model)
    state0, frozen0 = st.init(0)
    before = _full_params(st, jax.device_get(state0), jax.device_get(frozen0))
    state, frozen = state0, frozen0
    for b in fx.batches()[:3]:
        state, _ = st.train_step(state, frozen, global_batch(b, st))
    after = _full_params(st, jax.device_get(state), jax.device_get(frozen))

    def expect_trainable_rows(key):  # what the recipe says, stated independently
        if key.startswith("connector."):
            return "all"
        if key.startswith("language_model.layers."):
            return [0]
        if key.startswith("vision_tower.layers."):
            return [1, 2]
        if key.startswith("vision_tower.post_layernorm."):
            return "all"
        return None

    changed = 0
    for key, b in before.items():
        a, rows = after[key], expect_trainable_rows(key)
        frozen_rows = range(b.shape[0]) if rows is None else ([] if rows == "all" else
                                                             [i for i in range(b.shape[0]) if i not in rows])
        for i in frozen_rows:
            assert np.array_equal(a[i], b[i]), f"frozen {key}[{i}] changed"
        train_rows = [] if rows is None else (range(b.shape[0]) if rows == "all" else rows)
        for i in train_rows:
            if key.startswith("vision_tower.post_layernorm") or (key.startswith("vision_tower.layers") and i == 2):
                continue  # LLaVA reads the penultimate ViT layer: no gradient reaches the last
            assert not np.array_equal(a[i], b[i]), f"trainable {key}[{i}] did not change"
            changed += 1
    assert changed > 10
    # Optimizer moments exist for the trainable slices only.
    mu = state["opt_state"][1][0].mu
    assert mu["language_model.layers.mlp.up_proj.kernel"].shape[0] == 1
    assert mu["vision_tower.layers.mlp.fc1.kernel"].shape[0] == 2
    assert "language_model.embed_tokens" not in mu and "vision_tower.patch_embedding.kernel" not in mu
    tr, fr = st.partition.counts()
    assert tr == sum(int(np.prod(v.shape)) for v in jax.tree.leaves(mu))
    assert tr + fr == sum(v.size for v in before.values())


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_four_micro_batches_of_two_equal_one_batch_of_eight():
    batches = fx.batches()
    ref, ref_state, _ = _run(_stepper((1, 1, 1)), batches, 3)
    acc, acc_state, _ = _run(_stepper((2, 1, 1), micro=4), batches, 3)
    np.testing.assert_allclose(acc, ref, atol=1e-5)
    for k, v in ref_state["params"].items():
        np.testing.assert_allclose(acc_state["params"][k], v, atol=1e-5, err_msg=k)


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_loss_is_mean_over_the_global_batch_tokens_with_z_loss():
    """Reference: log-softmax of the model's own logits in float64 NumPy, averaged over every
    valid next-token position of the batch (rows hold different token counts, so a mean of
    per-device means would differ)."""
    batch = fx.batches()[0]
    st = _stepper((8, 1, 1))
    state, frozen = st.init(0)
    model = st.model(jax.device_get(state), jax.device_get(frozen))
    logits = np.asarray(model(jnp.asarray(batch["input_ids"]), jnp.asarray(batch["pixel_values"]),
                              jnp.asarray(batch["image_mask"]), segment_ids=jnp.asarray(batch["segment_ids"]),
                              positions=jnp.asarray(batch["positions"])).logits, np.float64)
    targets = batch["labels"][:, 1:]
    valid = targets != -100
    lg = logits[:, :-1]
    lse = np.log(np.exp(lg - lg.max(-1, keepdims=True)).sum(-1)) + lg.max(-1)
    nll = lse - np.take_along_axis(lg, np.where(valid, targets, 0)[..., None], -1)[..., 0]
    per_row = valid.sum(1)
    assert len(set(per_row.tolist())) > 1  # uneven rows: the two means differ
    ref_loss = nll[valid].mean()
    _, m = st.train_step(state, frozen, global_batch(batch, st))
    np.testing.assert_allclose(float(m["loss"]), ref_loss, rtol=2e-6)
    np.testing.assert_allclose(float(m["z_loss"]), (lse[valid] ** 2).mean(), rtol=2e-6)
    assert float(m["tokens"]) == valid.sum()


def test_non_finite_update_is_skipped_and_counted():
    batches = fx.batches()
    st = _stepper((8, 1, 1))
    state, frozen = st.init(0)
    state, _ = st.train_step(state, frozen, global_batch(batches[0], st))
    good = jax.device_get(state)
    bad = dict(batches[1], pixel_values=np.full_like(batches[1]["pixel_values"], np.nan))
    for i in range(2):
        state, m = st.train_step(state, frozen, global_batch(bad, st))
        assert not bool(m["finite"]) and int(m["bad_streak"]) == i + 1 and int(m["skipped"]) == i + 1
    now = jax.device_get(state)
    for k in good["params"]:
        assert np.array_equal(now["params"][k], good["params"][k]), k
    for a, b in zip(jax.tree.leaves(now["opt_state"]), jax.tree.leaves(good["opt_state"])):
        assert np.array_equal(a, b)
    state, m = st.train_step(state, frozen, global_batch(batches[1], st))
    assert bool(m["finite"]) and int(m["bad_streak"]) == 0 and int(m["skipped"]) == 2
    assert int(state["step"]) == 4


def test_weight_decay_skips_norms_biases_and_moca():
    st = _stepper(recipe={"connector": True, "llm": "all", "vision": "all", "moca": True},
                  model=fx.tiny_model_config(moca=True))
    mask = st.partition.decay_mask()
    assert mask["language_model.layers.mlp.up_proj.kernel"] and mask["language_model.embed_tokens"]
    assert not mask["language_model.layers.input_layernorm.scale"]
    assert not mask["vision_tower.layers.self_attn.q_proj.bias"]
    assert not mask["language_model.layers.moca.scale"] and not mask["language_model.layers.moca.shift"]


def test_batch_not_divisible_by_data_axis_is_a_clear_error():
    st = _stepper((8, 1, 1))
    with pytest.raises(ValueError, match="not divisible by the 8 data-parallel shards"):
        st.check_batch_size(12)
    st = _stepper((2, 1, 1), micro=4)  # built, never compiled here
    with pytest.raises(ValueError, match="micro-batch of 1 rows"):
        st.check_batch_size(4)
    with pytest.raises(ValueError, match="does not divide the 8 available devices"):
        make_mesh((3, 1, 1))
    with pytest.raises(ValueError, match="trainable.llm='until:9'"):
        _stepper(recipe={"llm": "until:9"})


# --- the CPU peak that MFU divides by (hand-computed: cores x 2 FMA units x lanes x 2 x GHz) ----
CPUINFO_AVX512 = "flags\t\t: fpu sse avx2 fma avx512f avx512dq\ncpu MHz\t\t: 2600.000\ncpu MHz\t\t: 2593.906\n"


@pytest.mark.parametrize("cpuinfo, max_khz, cores, want", [
    (CPUINFO_AVX512, "", 2, 2 * 2 * 16 * 2 * 2.6e9),             # VM: nominal clock from cpu MHz
    (CPUINFO_AVX512, "3500000\n", 2, 2 * 2 * 16 * 2 * 3.5e9),     # bare metal: cpufreq's max (turbo)
    ("flags\t\t: fpu sse avx2 fma\ncpu MHz\t\t: 3000.0\n", "", 8, 8 * 2 * 8 * 2 * 3.0e9),  # AVX2: 8 lanes
    ("Features\t: fp asimd\n", "", 4, 4 * 2 * 8 * 2 * 2.5e9),     # no clock given: 2.5 GHz
])
def test_cpu_peak_flops_from_the_cpu_features(cpuinfo, max_khz, cores, want):
    from mir_jax.train.metrics import _cpu_peak_flops

    assert _cpu_peak_flops(cpuinfo, max_khz, cores) == pytest.approx(want, rel=1e-12)
