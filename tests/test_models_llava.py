"""LlavaModel behaviour that HF parity does not cover: MoCa, packed sequences, scan vs unrolled
vs remat, logical sharding annotations, input checks, helpers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mir_jax.models import LlavaConfig, LlavaModel, expand_image_tokens, flops_per_token
from mir_jax.sharding import LOGICAL_AXIS_RULES, make_mesh, state_shardings, use_mesh

CFG = LlavaConfig.tiny()
K = CFG.num_image_tokens
IMG = CFG.image_token_id


def _batch():
    ids, am = expand_image_tokens([[1, 5, IMG, 7, 8, 9], [1, 10, 11, 12]], IMG, K)
    px = jax.random.normal(jax.random.key(0), (2, 1, 32, 32, 3))
    return jnp.asarray(ids), px, jnp.array([[True], [False]]), jnp.asarray(am)


@functools.partial(nnx.jit, static_argnames=("hidden",))
def run(m, ids, px=None, im=None, am=None, seg=None, hidden=False):
    """One compiled forward per distinct model graph / shapes (eager dispatch is slow)."""
    return m(ids, px, im, am, seg, output_hidden_states=hidden)


def _params(model):
    return {p: v for p, v in nnx.iter_graph(model) if isinstance(v, nnx.Param)}


def _copy_shared(src, dst):
    """Copies every parameter of `src` into the same path of `dst` (MoCa params stay)."""
    d = _params(dst)
    for p, v in _params(src).items():
        d[p].set_value(v.get_value())


@pytest.fixture(scope="module")
def plain():
    return LlavaModel(CFG, rngs=nnx.Rngs(0))


def test_moca_std0_is_identity_and_random_moca_touches_only_vision(plain):
    ids, px, im, am = _batch()
    ref = run(plain, ids, px, im, am, hidden=True)
    moca = LlavaModel(CFG.replace(moca=True, moca_std=0.0), rngs=nnx.Rngs(5))
    _copy_shared(plain, moca)
    out0 = run(moca, ids, px, im, am, hidden=True)
    np.testing.assert_array_equal(np.asarray(out0.logits), np.asarray(ref.logits))
    np.testing.assert_array_equal(np.asarray(out0.hidden_states), np.asarray(ref.hidden_states))

    # Random scale ~ N(1, 0.5), shift ~ N(0, 0.5) (what moca_std=0.5 draws), same graph.
    layers = moca.language_model.layers.moca
    layers.scale.set_value(1 + 0.5 * jax.random.normal(jax.random.key(7), layers.scale.shape))
    layers.shift.set_value(0.5 * jax.random.normal(jax.random.key(8), layers.shift.shape))
    out = run(moca, ids, px, im, am, hidden=True)
    vis = np.asarray(ref.modality_mask)
    assert vis.sum() == K
    h_ref, h = np.asarray(ref.hidden_states[1]), np.asarray(out.hidden_states[1])
    # Layer 1's input is untouched, so its text outputs are identical and its vision outputs
    # are exactly scale * h + shift.
    np.testing.assert_array_equal(h[~vis], h_ref[~vis])
    scale, shift = np.asarray(layers.scale[...])[0], np.asarray(layers.shift[...])[0]
    np.testing.assert_allclose(h[vis], h_ref[vis] * scale + shift, atol=1e-5)
    assert np.abs(h[vis] - h_ref[vis]).min() > 0
    # The moca_std initializer draws N(1, std) / N(0, std).
    init = LlavaModel(CFG.replace(moca=True, moca_std=0.5), rngs=nnx.Rngs(1)).language_model.layers.moca
    assert 0.3 < float(jnp.std(init.scale[...])) < 0.7 and abs(float(jnp.mean(init.scale[...])) - 1) < 0.2


def test_packed_segments_equal_separate_examples(plain):
    a = [1, 5, 6, 7, 8]
    b = [1, 9, 10]
    packed = jnp.asarray([a + b + [0, 0]])
    seg = jnp.asarray([[1] * 5 + [2] * 3 + [0, 0]])
    out = run(plain, packed, seg=seg).logits
    sep_a = run(plain, jnp.asarray([a])).logits
    sep_b = run(plain, jnp.asarray([b])).logits
    np.testing.assert_allclose(np.asarray(out[0, :5]), np.asarray(sep_a[0]), atol=1e-5)
    np.testing.assert_allclose(np.asarray(out[0, 5:8]), np.asarray(sep_b[0]), atol=1e-5)


def test_attention_config_key_reaches_every_attention_and_blockwise_equals_dense(plain):
    # attention="blockwise" everywhere (vision tower, decoder; packed segments, images), the
    # same parameters as `plain` (auto = dense at these lengths on CPU).
    twin = nnx.eval_shape(lambda: LlavaModel(CFG.replace(attention="blockwise"), rngs=nnx.Rngs(0)))
    impls = {m.attention_impl for _, m in nnx.iter_graph(twin) if hasattr(m, "attention_impl")}
    assert impls == {"blockwise"}
    nnx.update(twin, nnx.state(plain))
    ids, px, im, am = _batch()
    seg = jnp.asarray(np.where(np.asarray(am) != 0, 1 + (np.arange(ids.shape[1]) >= 5), 0))
    ref = np.asarray(run(plain, ids, px, im, seg=seg).logits)
    out = np.asarray(run(twin, ids, px, im, seg=seg).logits)
    real = np.asarray(seg) != 0
    np.testing.assert_allclose(out[real], ref[real], atol=1e-5, rtol=1e-5)


def test_scan_unrolled_and_remat_agree(plain):
    ids, px, im, am = _batch()
    ref = np.asarray(run(plain, ids, px, im, am).logits)
    m = LlavaModel(CFG.replace(scan_layers=False), rngs=nnx.Rngs(0))
    _copy_shared(plain, m)
    np.testing.assert_allclose(np.asarray(run(m, ids, px, im, am).logits), ref, atol=1e-5)

    def grads(model):
        # Text only: the decoder stack is what remat wraps (and it keeps the compile small).
        g = nnx.jit(nnx.grad(lambda m: jnp.sum(m(ids, attention_mask=am).logits ** 2)))(model)
        return {p: np.asarray(v.get_value()) for p, v in nnx.iter_graph(g) if isinstance(v, nnx.Variable)}

    m = LlavaModel(CFG.replace(remat="full"), rngs=nnx.Rngs(0))
    _copy_shared(plain, m)
    g_ref, g = grads(plain), grads(m)
    assert g_ref.keys() == g.keys()
    for p in g:
        np.testing.assert_allclose(g[p], g_ref[p], rtol=1e-4, atol=1e-4, err_msg=str(p))


def test_every_param_has_logical_names_and_sharded_forward_matches(plain):
    known = {name for name, _ in LOGICAL_AXIS_RULES}
    for path, v in _params(plain).items():
        names = v.get_metadata().get("out_sharding")
        assert names is not None and len(names) == v.get_value().ndim, path
        assert set(names) <= known, (path, names)
    assert _params(plain)[("language_model", "layers", "mlp", "up_proj", "kernel")].get_metadata()[
        "out_sharding"] == ("layers", "embed", "mlp")
    ids, px, im, am = _batch()
    ref = np.asarray(run(plain, ids, px, im, am).logits)
    mesh = make_mesh((2, 2, 2))
    state = nnx.state(plain)
    shardings = state_shardings(state, mesh)
    spec = shardings["language_model"]["layers"]["mlp"]["up_proj"]["kernel"].spec
    assert spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    m = nnx.merge(nnx.graphdef(plain), jax.device_put(state, shardings))
    with use_mesh(mesh):
        out = run(m, ids, px, im, am).logits
    np.testing.assert_allclose(np.asarray(out), ref, atol=1e-5)


def test_bf16_compute_keeps_float32_params(plain):
    ids, px, im, am = _batch()
    m = LlavaModel(CFG.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
    _copy_shared(plain, m)
    assert all(v.get_value().dtype == jnp.float32 for v in _params(m).values())
    out = run(m, ids, px, im, am)
    assert out.logits.dtype == jnp.float32
    ref = np.asarray(run(plain, ids, px, im, am).logits)
    assert np.abs(np.asarray(out.logits) - ref).max() < 0.1 * np.abs(ref).max()


def test_image_token_checks_and_expansion(plain):
    ids, am = expand_image_tokens([[3, IMG, 4], [IMG, IMG]], IMG, 2, pad_token_id=0)
    np.testing.assert_array_equal(ids, [[3, IMG, IMG, 4], [IMG, IMG, IMG, IMG]])
    np.testing.assert_array_equal(am, [[1, 1, 1, 1], [1, 1, 1, 1]])
    bad = jnp.asarray([[1] + [IMG] * (K - 1) + [2]])
    px = jnp.zeros((1, 1, 32, 32, 3))
    with pytest.raises(ValueError, match="multiples of K"):
        plain(bad, px)
    with pytest.raises(ValueError, match="image_mask marks"):
        plain(jnp.asarray([[1] + [IMG] * K]), px, jnp.asarray([[False]]))
    with pytest.raises(ValueError, match="do not match the vision tower"):
        plain(jnp.asarray([[1] + [IMG] * K]), jnp.zeros((1, 1, 16, 16, 3)))


def test_config_dict_round_trip_and_flops():
    d = CFG.to_dict()
    assert LlavaConfig.from_dict(d) == CFG
    with pytest.raises(ValueError, match="unknown config keys"):
        LlavaConfig.from_dict({**d, "vison": {}})
    t = CFG.text
    dense = t.num_layers * (t.hidden_size * t.head_dim * (t.num_heads + 2 * t.num_kv_heads)
                            + t.num_heads * t.head_dim * t.hidden_size + 3 * t.hidden_size * t.intermediate_size)
    dense += t.hidden_size * t.vocab_size
    n_matmul = sum(v.get_value().size for p, v in _params(LlavaModel(CFG, rngs=nnx.Rngs(0))).items()
                   if p[0] == "language_model" and p[-1] in ("kernel", "lm_head"))
    assert dense == n_matmul
    assert flops_per_token(CFG, 0, training=False) == 2 * dense
