"""The linear probe of the connector's input (mir_jax/evals/probe.py): the ridge classifier
against np.linalg.lstsq and a hand-computed case; accuracies on features that do / do not hold
the labels; the cell pooling and labels by hand; the probe end to end on per-patch colour presence (the
cell -> patch mapping is right only if colour reads off them); `vision_features` against HF
transformers' CLIP tower on normalized pixels computed here; the CLI on a tiny saved model."""

import json

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from mir_jax.data import synthetic as syn
from mir_jax.evals import probe
from mir_jax.models import LlavaConfig, LlavaModel
from mir_jax.weights import hf as mhf

CLIP_MEAN = np.array([0.48145466, 0.4578275, 0.40821073])
CLIP_STD = np.array([0.26862954, 0.26130258, 0.27577711])


# ---------------------------------------------------------------------------------------------
# The ridge classifier
# ---------------------------------------------------------------------------------------------
def test_ridge_is_least_squares_on_the_augmented_system():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 4)) * [1.0, 5.0, 0.1, 2.0] + [0.0, 3.0, -1.0, 7.0]
    y = rng.integers(0, 3, 60)
    lam = 0.05
    got = probe.fit_ridge(x, y, 3, lam)
    # Reference: standardize, then ridge = least squares of [Z; sqrt(n lam) I] W = [T - mean T; 0].
    z = (x - x.mean(0)) / x.std(0)
    t = np.eye(3)[y]
    a = np.vstack([z, np.sqrt(60 * lam) * np.eye(4)])
    b = np.vstack([t - t.mean(0), np.zeros((4, 3))])
    w = np.linalg.lstsq(a, b, rcond=None)[0]
    np.testing.assert_allclose(got.weights, w, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(got.scores(x), z @ w + t.mean(0), rtol=1e-10, atol=1e-12)
    # Unpenalized, it is ordinary least squares with an intercept on the raw features.
    ols = probe.fit_ridge(x, y, 3, 0.0)
    xi = np.hstack([x, np.ones((60, 1))])
    np.testing.assert_allclose(ols.scores(x), xi @ np.linalg.lstsq(xi, t, rcond=None)[0], atol=1e-10)


def test_ridge_two_class_by_hand():
    # x = 0..3, y = 0 0 1 1: the least-squares line for class 1 is 0.5 + 0.4 (x - 1.5).
    x = np.arange(4.0)[:, None]
    got = probe.fit_ridge(x, np.array([0, 0, 1, 1]), 2, 0.0)
    one = np.array([-0.1, 0.3, 0.7, 1.1])
    np.testing.assert_allclose(got.scores(x), np.stack([1 - one, one], 1), atol=1e-12)
    assert got.predict(np.array([[1.4], [1.6], [-5.0], [9.0]])).tolist() == [0, 1, 0, 1]
    # A constant feature is left unscaled instead of dividing by zero.
    flat = probe.fit_ridge(np.hstack([x, np.full((4, 1), 3.0)]), np.array([0, 0, 1, 1]), 2, 0.0)
    np.testing.assert_allclose(flat.scores(np.hstack([x, np.full((4, 1), 3.0)])), got.scores(x), atol=1e-10)


def _labels(rng, n):
    """Imbalanced labels over 7 classes (the last, "empty", most frequent: 0.6)."""
    return rng.choice(7, size=n, p=[0.1, 0.05, 0.05, 0.1, 0.05, 0.05, 0.6])


def test_accuracy_is_one_on_features_that_hold_the_labels_and_chance_on_noise():
    rng = np.random.default_rng(1)
    ytr, yte = _labels(rng, 3000), _labels(rng, 1000)
    mode = np.bincount(ytr).argmax()
    chance = np.mean(yte == mode)

    def holding(y):
        return np.hstack([np.eye(7)[y] + 0.2 * rng.standard_normal((len(y), 7)),
                          rng.standard_normal((len(y), 5))])

    r = probe.probe_accuracy(holding(ytr), ytr, holding(yte), yte, 7, test_mask=yte != 6)
    assert r["accuracy"] > 0.99 and r["accuracy_masked"] > 0.99
    assert r["majority"] == pytest.approx(chance)
    # Among non-empty test rows the baseline is the most frequent non-empty training class.
    masked_mode = np.bincount(ytr[ytr != 6], minlength=6).argmax()
    assert r["majority_masked"] == pytest.approx(np.mean(yte[yte != 6] == masked_mode))
    noise = probe.probe_accuracy(rng.standard_normal((3000, 12)), ytr, rng.standard_normal((1000, 12)), yte, 7)
    assert abs(noise["accuracy"] - chance) < 0.03
    assert noise["majority"] == pytest.approx(chance)


# ---------------------------------------------------------------------------------------------
# Cells, labels, and the probe on pixels
# ---------------------------------------------------------------------------------------------
def test_cell_pooling_by_hand():
    np.testing.assert_allclose(probe.cell_pooling(4), np.eye(16))
    p8 = probe.cell_pooling(8)  # cell (1, 2) = patches rows 2-3, cols 4-5
    want = np.zeros((8, 8))
    want[2:4, 4:6] = 0.25
    np.testing.assert_allclose(p8[1 * 4 + 2], want.reshape(-1))
    p6 = probe.cell_pooling(6)  # cell 0 covers [0, 1/4): patch 0 whole (2/3), patch 1 a third
    want = np.zeros((6, 6))
    want[:2, :2] = [[4 / 9, 2 / 9], [2 / 9, 1 / 9]]
    np.testing.assert_allclose(p6[0], want.reshape(-1), atol=1e-12)
    np.testing.assert_allclose(p6.sum(1), 1.0)
    p2 = probe.cell_pooling(2)  # one patch holds four cells
    assert p2[[0, 1, 4, 5], 0].tolist() == [1, 1, 1, 1] and p2[15].tolist() == [0, 0, 0, 1]


def test_scene_labels_by_hand():
    scene = [{"kind": "square", "colour": "blue", "size": "large", "count": 2, "side": "left", "cells": [(0, 1), (3, 0)]},
             {"kind": "circle", "colour": "orange", "size": "small", "count": 1, "side": "right", "cells": [(2, 3)]}]
    lab = probe.scene_labels([scene])
    colour, shape, size = lab["colour"][0], lab["shape"][0], lab["size"][0]
    assert colour[1] == 2 and colour[12] == 2 and colour[11] == 5  # blue, blue, orange
    assert shape[1] == 1 and shape[11] == 0 and size[1] == 1 and size[11] == 0
    empty = [i for i in range(16) if i not in (1, 12, 11)]
    assert (colour[empty] == 6).all() and (shape[empty] == 3).all() and (size[empty] == 2).all()
    assert lab["count"].tolist() == [1]  # the first group's count 2 is class index 1


def _patch_colours(images, patch):
    """[N, S, S, 3] -> [N, (S/patch)^2, 6]: per patch (row-major), whether any of its pixels is
    painted each of the corpus's 6 colours (render paints them exactly): features that hold
    each cell's colour linearly, if cells map to the right patches."""
    n, s = images.shape[:2]
    g = s // patch
    patches = images.reshape(n, g, patch, g, patch, 3).transpose(0, 1, 3, 2, 4, 5).reshape(n, g * g, -1, 3)
    return np.stack([(patches == rgb).all(-1).any(-1) for rgb in syn.COLOURS.values()], -1)


@pytest.mark.parametrize("patch", [8, 4])
def test_probe_reads_colour_off_colour_presence_per_patch(patch):
    tr_scenes, tr = probe.draw_scenes(300, 32, seed=3)
    te_scenes, te = probe.draw_scenes(100, 32, seed=3, start=300)
    grid = 32 // patch  # 4: one patch per cell; 8: four patches pooled per cell
    r = probe.probe_features(_patch_colours(tr, patch), tr_scenes, _patch_colours(te, patch), te_scenes, grid)
    colour = r["cells"]["colour"]
    assert colour["accuracy"] > 0.98 and colour["accuracy_occupied"] > 0.95
    assert colour["majority_occupied"] < 0.3 and colour["majority"] > 0.7  # most cells are empty
    # The same features one cell off: colour is no longer readable (the mapping matters).
    rolled = lambda x: np.roll(x.reshape(len(x), grid, grid, -1), grid // 4, axis=2).reshape(x.shape)  # noqa: E731
    off = probe.probe_features(rolled(_patch_colours(tr, patch)), tr_scenes, rolled(_patch_colours(te, patch)),
                               te_scenes, grid)
    assert off["cells"]["colour"]["accuracy_occupied"] < 0.5


def test_probe_scenes_are_their_own_stream():
    scenes, images = probe.draw_scenes(3, 32, seed=5, start=7)
    rng = np.random.default_rng([5, 99, 8])
    assert scenes[1] == syn.random_scene(rng)
    np.testing.assert_array_equal(images[1], syn.render(scenes[1], 32, rng))
    train = syn.SyntheticSource("caption", image_size=32, seed=5)
    assert all(scenes[i] != train.scene(7 + i) for i in range(3))


# ---------------------------------------------------------------------------------------------
# vision_features against HF transformers, and the CLI
# ---------------------------------------------------------------------------------------------
@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_vision_features_equal_hf_clip_on_normalized_pixels(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from mir_jax.weights import load_weights
    from tests.torch_init import save_random_llava

    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                           num_attention_heads=4, image_size=28, patch_size=7)
    text = transformers.LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=1,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=64)
    cfg = transformers.LlavaConfig(vision_config=vision, text_config=text, image_token_id=63)
    hfm = save_random_llava(cfg, 0, str(tmp_path))
    model = load_weights(str(tmp_path)).model
    images = np.random.default_rng(0).integers(0, 256, (5, 28, 28, 3), dtype=np.uint8)
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    got = probe.vision_features(model, images, mean=mean, std=std, batch_size=2)  # padded last batch
    pixels = (images / 255.0 - np.array(mean)) / np.array(std)
    with torch.no_grad():
        hs = hfm.model.vision_tower(torch.tensor(pixels, dtype=torch.float32).permute(0, 3, 1, 2),
                                    output_hidden_states=True).hidden_states
        want = hs[-2][:, 1:]  # LLaVA's default: layer -2, CLS dropped
        projected = hfm.model.multi_modal_projector(want).numpy()
    assert got.shape == (5, 16, 32) and got.dtype == np.float32
    assert np.abs(want.numpy()).max() > 0.5
    np.testing.assert_allclose(got, want.numpy(), atol=1e-4, rtol=0)
    # What the connector receives: through it, the model's own image features and HF's projection.
    np.testing.assert_allclose(np.asarray(model.connector(jnp.asarray(got))), projected, atol=1e-4, rtol=0)
    np.testing.assert_allclose(np.asarray(model.image_features(jnp.asarray(pixels, jnp.float32))), projected,
                               atol=1e-4, rtol=0)


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_vision_features_of_several_layers_and_full_strategy():
    model = LlavaModel(LlavaConfig.tiny(vision_feature_layer=(0, 2), vision_feature_select_strategy="full"),
                       rngs=nnx.Rngs(0))
    images = np.random.default_rng(1).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    got = probe.vision_features(model, images)
    assert got.shape == (3, 17, 64)  # CLS kept, two 32-wide layers side by side
    pixels = jnp.asarray(((images / 255.0 - CLIP_MEAN) / CLIP_STD).astype(np.float32))
    np.testing.assert_allclose(np.asarray(model.connector(jnp.asarray(got))),
                               np.asarray(model.image_features(pixels)), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="uint8"):
        probe.vision_features(model, images.astype(np.float32))
    with pytest.raises(ValueError, match="32, 32, 3"):
        probe.vision_features(model, images[:, :16])


def test_cli_on_a_tiny_saved_model(tmp_path, capsys):
    model = LlavaModel(LlavaConfig.tiny(), rngs=nnx.Rngs(0))
    path = tmp_path / "tiny"
    mhf.save_pretrained(model, str(path))
    mean, std = [0.1, 0.2, 0.3], [0.3, 0.2, 0.1]
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "CLIPImageProcessor", "size": 32, "crop_size": 32,
         "image_mean": mean, "image_std": std}))
    out = tmp_path / "res" / "probe.json"
    result = probe.main([str(path), "--num_train=40", "--num_test=20", f"--out={out}"])
    printed = capsys.readouterr().out
    assert "colour" in printed and "count (image)" in printed and "majority" in printed
    saved = json.loads(out.read_text())
    assert saved["mean"] == mean and saved["std"] == std and saved["feature_shape"] == [16, 32]
    assert set(saved["cells"]) == {"colour", "shape", "size"} and saved["num_test"] == 20
    assert saved["cells"]["colour"] == result["cells"]["colour"]
    # The model's own normalization was used: the library call with it gives the same numbers.
    again = probe.probe_scene(model, num_train=40, num_test=20, mean=mean, std=std)
    assert again["cells"] == saved["cells"]
    # Rendering larger and resizing to the tower's size also runs.
    big = probe.probe_scene(model, image_size=64, num_train=20, num_test=10)
    assert big["image_size"] == 64 and big["feature_shape"] == [16, 32]
    with pytest.raises(SystemExit) as e:
        probe.main([str(tmp_path / "nope")])
    assert e.value.code == 2 and "does not exist" in capsys.readouterr().err
