"""Linear probes of the vision features a LLaVA connector receives: does the tower hold the scene?

`vision_features` returns what `LlavaModel.image_features` feeds the connector; `probe_scene`
fits ridge classifiers of each 4x4-grid cell's colour, shape and size (and the scene's count)
on embedded-corpus scenes from their own random stream, against majority baselines
(docs/evaluation.md).

CLI (WEIGHTS: whatever `mir_jax.weights.load_weights` takes; the model's own image mean/std):
  python -m mir_jax.evals.probe WEIGHTS [--num_train=2000] [--num_test=500] [--seed=0]
      [--ridge=1e-3] [--out=probe.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from mir_jax.data import synthetic as syn
from mir_jax.data.images import CLIP_MEAN, CLIP_STD, ImageConfig, normalize, preprocess

EMPTY = "empty"
CLASSES = {
    "colour": (*syn.COLOURS, EMPTY),
    "shape": (*syn.KINDS, EMPTY),
    "size": (*syn.SIZES, EMPTY),
}
COUNTS = (1, 2, 3)
PROBE_STREAM = 99  # the second seed word: no corpus kind (1-5) or benchmark task (11-14)
DEFAULT_RIDGE = 1e-3


# ==============================================================================================
# Features
# ==============================================================================================
def connector_input(model, pixel_values: jax.Array) -> jax.Array:
    """[N, H, W, C] normalized -> [N, P, D]: the vision features `LlavaModel.image_features`
    passes to its connector (D = vision width x number of feature layers)."""
    cfg = model.config
    hs = model.vision_tower.hidden_states(pixel_values, cfg.feature_layers)
    if cfg.vision_feature_select_strategy == "default":
        hs = [h[:, 1:] for h in hs]
    return hs[0] if len(hs) == 1 else jnp.concatenate(hs, axis=-1)


@functools.partial(jax.jit, static_argnums=0)
def _connector_input(graphdef, state, pixel_values):
    return connector_input(nnx.merge(graphdef, state), pixel_values)


def vision_features(model, images: np.ndarray, *, mean=CLIP_MEAN, std=CLIP_STD,
                    batch_size: int = 64) -> np.ndarray:
    """uint8 images [N, H, W, 3] (at the tower's size) -> float32 [N, P, D], the connector's input.

    Pixels are normalized as the data pipeline does (`mir_jax.data.images.normalize` with
    `mean`/`std`, default CLIP's: what configs/common.py's runlocal recipes use). Batches of
    `batch_size`, the last one padded so one program serves all."""
    images = np.asarray(images)
    size = model.config.vision.image_size
    if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
        raise ValueError(f"images must be uint8 [N, {size}, {size}, 3] (the vision tower's size), "
                         f"got {images.dtype} {list(images.shape)}")
    graphdef, state = nnx.split(model)
    n = len(images)
    b = max(1, min(batch_size, n))
    out = []
    for start in range(0, n, b):
        chunk = images[start:start + b]
        pixels = np.zeros((b, size, size, 3), np.float32)
        normalize(chunk, mean, std, out=pixels[:len(chunk)])
        feats = _connector_input(graphdef, state, jnp.asarray(pixels))
        out.append(np.asarray(feats[:len(chunk)], np.float32))
    if not out:
        p, d = model.config.num_vision_tokens, model.config.vision.hidden_size * len(model.config.feature_layers)
        return np.zeros((0, p, d), np.float32)
    return np.concatenate(out)


def cell_pooling(grid: int, cells: int = syn.GRID) -> np.ndarray:
    """[cells^2, grid^2] float64: row c averages the patches covering cell c, each weighted by
    the fraction of the cell it covers (rows sum to 1). Patches and cells both in row-major
    order; grid = cells: the identity; grid = 2 x cells: the mean of each cell's 2x2 patches."""
    lo = np.arange(grid) / grid
    cl = np.arange(cells) / cells
    # 1-D overlap of cell i ([i/cells, (i+1)/cells)) with patch j, as a fraction of the cell.
    ov = np.clip(np.minimum(cl[:, None] + 1 / cells, lo[None] + 1 / grid) - np.maximum(cl[:, None], lo[None]),
                 0, None) * cells
    return np.einsum("ab,cd->acbd", ov, ov).reshape(cells * cells, grid * grid)


def cell_features(features: np.ndarray, grid: int) -> np.ndarray:
    """[N, P, D] -> [N, 16, D]: per grid cell of the scene, the pooled patch features. The last
    grid^2 tokens are the patches (a CLS token kept by a "full" select strategy comes first)."""
    n_patch = grid * grid
    if features.shape[1] < n_patch:
        raise ValueError(f"features hold {features.shape[1]} tokens, fewer than the {grid}x{grid} patches")
    return np.einsum("cp,npd->ncd", cell_pooling(grid), features[:, -n_patch:].astype(np.float64))


# ==============================================================================================
# Scenes and labels
# ==============================================================================================
def draw_scenes(num: int, image_size: int, *, seed: int = 0, start: int = 0) -> tuple[list, np.ndarray]:
    """Scenes start..start+num-1 of the probe's stream and their uint8 [num, S, S, 3] renders
    (each scene then its render from one generator, as the corpus draws them)."""
    scenes, images = [], np.zeros((num, image_size, image_size, 3), np.uint8)
    for i in range(num):
        rng = np.random.default_rng([seed, PROBE_STREAM, start + i])
        scene = syn.random_scene(rng)
        scenes.append(scene)
        images[i] = syn.render(scene, image_size, rng)
    return scenes, images


def scene_labels(scenes: list) -> dict[str, np.ndarray]:
    """{attribute: int [N, 16]} class indices into CLASSES[attribute] per cell (row-major),
    plus "count": int [N], the first group's count."""
    n, cells = len(scenes), syn.GRID * syn.GRID
    out = {a: np.full((n, cells), len(c) - 1, np.int64) for a, c in CLASSES.items()}  # empty last
    for i, scene in enumerate(scenes):
        for g in scene:
            for row, col in g["cells"]:
                c = row * syn.GRID + col
                out["colour"][i, c] = CLASSES["colour"].index(g["colour"])
                out["shape"][i, c] = CLASSES["shape"].index(g["kind"])
                out["size"][i, c] = CLASSES["size"].index(g["size"])
    out["count"] = np.array([COUNTS.index(s[0]["count"]) for s in scenes], np.int64)
    return out


# ==============================================================================================
# The linear classifier
# ==============================================================================================
@dataclasses.dataclass(frozen=True)
class RidgeProbe:
    """A ridge regression to one-hot targets on standardized features; predicts the argmax.

    mean, scale: [D] the training features' mean and standard deviation (1 where constant);
    weights [D, C], bias [C] (the targets' training mean: the features are centred)."""

    mean: np.ndarray
    scale: np.ndarray
    weights: np.ndarray
    bias: np.ndarray

    def scores(self, x: np.ndarray) -> np.ndarray:
        """[N, D] -> [N, C]."""
        return ((np.asarray(x, np.float64) - self.mean) / self.scale) @ self.weights + self.bias

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.argmax(self.scores(x), axis=-1)


def fit_ridge(x: np.ndarray, y: np.ndarray, num_classes: int, ridge: float = DEFAULT_RIDGE) -> RidgeProbe:
    """Closed form: with Z the standardized x and T the one-hot y, W minimizes
    ||Z W - (T - mean T)||^2 / n + ridge ||W||^2, i.e. W = (Z'Z + n ridge I)^-1 Z'(T - mean T)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y)
    n, d = x.shape
    mean = x.mean(0)
    scale = x.std(0)
    scale = np.where(scale > 1e-12 * max(1.0, float(np.abs(x).max(initial=0))), scale, 1.0)
    z = (x - mean) / scale
    t = np.eye(num_classes)[y]
    bias = t.mean(0)
    gram = z.T @ z + n * ridge * np.eye(d)
    weights = np.linalg.lstsq(gram, z.T @ (t - bias), rcond=None)[0] if ridge == 0 else \
        np.linalg.solve(gram, z.T @ (t - bias))
    return RidgeProbe(mean, scale, weights, bias)


def probe_accuracy(train_x, train_y, test_x, test_y, num_classes: int, *, ridge: float = DEFAULT_RIDGE,
                   test_mask: np.ndarray | None = None) -> dict:
    """Fit on train, score on test: {"accuracy", "majority"} (the majority baseline predicts the
    most frequent training class). With test_mask, also "accuracy_masked"/"majority_masked" over
    the masked test rows, whose baseline is the most frequent training class among rows of the
    labels the mask keeps."""
    probe = fit_ridge(train_x, train_y, num_classes, ridge)
    pred = probe.predict(test_x)
    majority = int(np.bincount(train_y, minlength=num_classes).argmax())
    out = {"accuracy": float(np.mean(pred == test_y)), "majority": float(np.mean(test_y == majority))}
    if test_mask is not None:
        kept = np.unique(test_y[test_mask])
        counts = np.bincount(train_y, minlength=num_classes)
        masked_majority = int(kept[np.argmax(counts[kept])]) if len(kept) else majority
        out["accuracy_masked"] = float(np.mean(pred[test_mask] == test_y[test_mask]))
        out["majority_masked"] = float(np.mean(test_y[test_mask] == masked_majority))
    return out


# ==============================================================================================
# The probe
# ==============================================================================================
def probe_features(train_features: np.ndarray, train_scenes: list, test_features: np.ndarray,
                   test_scenes: list, grid: int, *, ridge: float = DEFAULT_RIDGE) -> dict:
    """The probe on given features [N, P, D] of the given scenes (P >= grid^2 patch tokens)."""
    labels = {"train": scene_labels(train_scenes), "test": scene_labels(test_scenes)}
    cells = {"train": cell_features(train_features, grid), "test": cell_features(test_features, grid)}
    d = cells["train"].shape[-1]
    result = {"cells": {}, "scene": {}}
    for attr, classes in CLASSES.items():
        ytr, yte = labels["train"][attr].reshape(-1), labels["test"][attr].reshape(-1)
        r = probe_accuracy(cells["train"].reshape(-1, d), ytr, cells["test"].reshape(-1, d), yte,
                           len(classes), ridge=ridge, test_mask=yte != len(classes) - 1)
        result["cells"][attr] = {
            "accuracy": r["accuracy"], "majority": r["majority"],
            "accuracy_occupied": r["accuracy_masked"], "majority_occupied": r["majority_masked"],
            "classes": list(classes)}
    pooled = {s: f.astype(np.float64).mean(1) for s, f in (("train", train_features), ("test", test_features))}
    r = probe_accuracy(pooled["train"], labels["train"]["count"], pooled["test"], labels["test"]["count"],
                       len(COUNTS), ridge=ridge)
    result["scene"]["count"] = {**r, "classes": list(COUNTS)}
    return result


def probe_scene(model, *, image_size: int | None = None, num_train: int = 2000, num_test: int = 500,
                seed: int = 0, mean=CLIP_MEAN, std=CLIP_STD, ridge: float = DEFAULT_RIDGE,
                batch_size: int = 64) -> dict:
    """Linear probes of `model`'s connector input on embedded-corpus scenes.

    image_size: the render size (default: the tower's; else resized, bicubic); mean/std: the
    model's image normalization. Returns {"cells": {colour|shape|size: {accuracy, majority,
    accuracy_occupied, majority_occupied, classes}}, "scene": {"count": {accuracy, majority,
    classes}}, and the settings: num_train, num_test, seed, ridge, image_size, feature_shape
    [P, D], stream}."""
    if num_train < 1 or num_test < 1:
        raise ValueError(f"num_train and num_test must be positive, got {num_train} and {num_test}")
    tower = model.config.vision
    size = image_size or tower.image_size
    feats, scenes = {}, {}
    for split, start, num in (("train", 0, num_train), ("test", num_train, num_test)):
        scenes[split], images = draw_scenes(num, size, seed=seed, start=start)
        if size != tower.image_size:
            cfg = ImageConfig(size=tower.image_size, mode="resize")
            images = np.stack([preprocess(Image.fromarray(im), cfg) for im in images])
        feats[split] = vision_features(model, images, mean=mean, std=std, batch_size=batch_size)
    result = probe_features(feats["train"], scenes["train"], feats["test"], scenes["test"], tower.grid,
                            ridge=ridge)
    result.update(num_train=num_train, num_test=num_test, seed=seed, ridge=ridge, image_size=size,
                  feature_shape=list(feats["train"].shape[1:]),
                  stream=f"np.random.default_rng([{seed}, {PROBE_STREAM}, k])")
    return result


def format_probe(result: dict) -> str:
    """The table: per attribute, held-out accuracy and majority baseline, all and occupied cells."""
    lines = [f"{'cell attribute':<16}{'all cells':>10}{'majority':>10}{'occupied':>10}{'majority':>10}"]
    for attr, r in result["cells"].items():
        lines.append(f"{attr:<16}{r['accuracy']:>10.3f}{r['majority']:>10.3f}"
                     f"{r['accuracy_occupied']:>10.3f}{r['majority_occupied']:>10.3f}")
    c = result["scene"]["count"]
    lines.append(f"{'count (image)':<16}{c['accuracy']:>10.3f}{c['majority']:>10.3f}")
    return "\n".join(lines)


# ==============================================================================================
# CLI
# ==============================================================================================
def _image_normalization(weights) -> tuple[tuple, tuple]:
    """The (mean, std) the model was fed: a workdir's run config, an HF directory's
    preprocessor_config.json (CLIP's when it has none)."""
    if weights.source.kind == "workdir" and weights.run_config is not None:
        return tuple(weights.run_config.image_mean), tuple(weights.run_config.image_std)
    from mir_jax.data.images import image_config_from_hf

    try:
        image = image_config_from_hf(weights.source.path)
    except FileNotFoundError:
        return CLIP_MEAN, CLIP_STD
    return image.mean, image.std


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="python -m mir_jax.evals.probe", description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="an HF directory, a training WORKDIR or WORKDIR@STEP")
    parser.add_argument("--num_train", type=int, default=2000, help="training scenes (16 cells each)")
    parser.add_argument("--num_test", type=int, default=500, help="held-out scenes")
    parser.add_argument("--seed", type=int, default=0, help="the probe stream's seed")
    parser.add_argument("--ridge", type=float, default=DEFAULT_RIDGE, help="ridge penalty per sample")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--out", default=None, help="write the result as JSON here")
    args = parser.parse_args(argv)
    from mir_jax.weights import load_weights
    from mir_jax.weights.checkpoint import CheckpointError

    try:
        weights = load_weights(args.weights)
        mean, std = _image_normalization(weights)
        result = probe_scene(weights.model, num_train=args.num_train, num_test=args.num_test, seed=args.seed,
                             mean=mean, std=std, ridge=args.ridge, batch_size=args.batch_size)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        print(f"probe: error: {e}", file=sys.stderr)
        sys.exit(2)
    result.update(weights=weights.source.to_json(), mean=list(mean), std=list(std))
    print(f"linear probe of the connector's input: {weights.source.describe()}")
    print(f"{args.num_train} train / {args.num_test} test scenes, features {result['feature_shape']}, "
          f"scenes from {result['stream']}, ridge {args.ridge:g}")
    print(format_probe(result))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump(result, f, indent=1)
        print(f"wrote {args.out}")
    return result


if __name__ == "__main__":
    main()
