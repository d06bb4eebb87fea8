"""A model ready to evaluate: its weights (`mir_jax.weights.load_weights`) and what it takes to
feed it as it was trained (`Preprocessing`): for a training workdir its config's tokenizer,
image settings and template (`training_template`); for an HF directory its own tokenizer and
preprocessor_config.json with vicuna_v1, or the training template `mir_jax.weights.export` kept.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

from mir_jax.data.images import ImageConfig, image_config_from_hf
from mir_jax.weights import Weights, load_weights

from .base import EvalModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """What it takes to feed a model as it was trained.

    image: pixels (size, mean/std, pad/crop/resize). tokenizer: a mir_jax.data tokenizer.
    template / system: the prompt template of its instruction data ("vicuna_v1", "chat") or of
    its pre-training ("plain", "document"), and its system prompt (None: the template's own).
    """

    image: ImageConfig
    tokenizer: Any
    template: str = "vicuna_v1"
    system: str | None = None


def training_template(data_config) -> tuple[str, str | None]:
    """(template, system prompt) the model of a training run answers in: the conversation
    template when any source is instruction data, else plain for caption pre-training, else
    the document layout."""
    from mir_jax.data.mixture import default_template, resolve_config

    cfg = resolve_config(data_config)
    templates = [s.get("template") or default_template(s) for s in cfg["sources"]]
    for t in ("vicuna_v1", "chat", "plain"):
        if t in templates:
            return t, cfg.get("system")
    return "document", cfg.get("system")


def run_image_config(run_config, model_config, image_mode: str | None = None) -> ImageConfig:
    """The pixels a training run fed its model (its image_mean/std, its data config's image
    mode, the tower's size): what the loop's own evaluations and `evaluate.py` both use."""
    from mir_jax.data.mixture import resolve_config

    data = run_config.get("data")
    mode = image_mode or (resolve_config(data)["image_mode"] if data is not None else "pad")
    return ImageConfig(size=model_config.vision.image_size, mean=tuple(run_config.image_mean),
                       std=tuple(run_config.image_std), mode=mode)


def workdir_preprocessing(run_config, model_config, image_mode: str | None = None) -> Preprocessing:
    """What a training run's data pipeline fed its model (its config: tokenizer, image_*, data)."""
    from mir_jax.data import load_tokenizer

    template, system = training_template(run_config.get("data"))
    image = run_image_config(run_config, model_config, image_mode)
    return Preprocessing(image, load_tokenizer(run_config.tokenizer or None), template, system)


def hf_preprocessing(directory: str, model_config, image_mode: str | None = None) -> Preprocessing:
    """An HF directory's own tokenizer and preprocessor_config.json (defaults when absent)."""
    from mir_jax.data import ByteTokenizer, load_tokenizer

    name = os.path.basename(os.path.normpath(directory))
    try:
        image = image_config_from_hf(directory, mode=image_mode)
    except FileNotFoundError:
        image = ImageConfig(size=model_config.vision.image_size, mode=image_mode or "pad")
    if image.size != model_config.vision.image_size:
        # The encoder takes only its own size (the position embeddings fix it).
        print(f"[{name}] preprocessor_config.json says {image.size} px, the vision tower takes "
              f"{model_config.vision.image_size} px: using the tower's")
        image = dataclasses.replace(image, size=model_config.vision.image_size, shortest_edge=None)
    if any(os.path.exists(os.path.join(directory, f)) for f in TOKENIZER_FILES):
        tokenizer = load_tokenizer(directory)
    else:
        tokenizer = ByteTokenizer()
        print(f"[{name}] no tokenizer files; using the built-in byte tokenizer")
    template, system = _exported_template(directory)
    return Preprocessing(image, tokenizer, template, system)


def _exported_template(directory: str) -> tuple[str, str | None]:
    """The template and system prompt a directory written by `mir_jax.weights.export` was
    trained with (its export.json keeps the training config); vicuna_v1 with its own system
    prompt (LLaVA-1.5's) for any other HF directory."""
    import json

    from mir_jax.weights.export import EXPORT_FILE

    path = os.path.join(directory, EXPORT_FILE)
    if not os.path.exists(path):
        return "vicuna_v1", None
    with open(path) as f:
        train_config = json.load(f).get("train_config") or {}
    if not train_config.get("data"):
        return "vicuna_v1", None
    return training_template(train_config["data"])


def load_model(path: str, *, template: str | None = None, image_mode: str | None = None,
               step: int | None = None, mesh=None, weights: Weights | None = None) -> EvalModel:
    """The `EvalModel` at `path` ('WORKDIR', 'WORKDIR@STEP' or an HF directory): its weights
    (`load_weights`, whose one-line errors it raises, or `weights` already loaded from `path`)
    and preprocessing. `template` overrides the model's own prompt template, `image_mode` its
    pad/crop/resize."""
    weights = weights or load_weights(path, step=step, mesh=mesh)
    if weights.source.kind == "workdir":
        pre = workdir_preprocessing(weights.run_config, weights.config, image_mode)
    else:
        pre = hf_preprocessing(weights.source.path, weights.config, image_mode)
    name = os.path.basename(os.path.normpath(path))
    return EvalModel(name, weights.model, pre.tokenizer, pre.image, template or pre.template,
                     pre.system, mesh=mesh, path=path, weights=weights.source)
