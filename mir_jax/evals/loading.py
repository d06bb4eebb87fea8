"""Loading a model to evaluate, from a mir-jax training workdir or a Hugging Face LLaVA directory.

  load_weights(path)         (LlavaConfig, model): the parameters only;
  load_for_evaluation(path)  (config, model, preprocessing): also what it takes to feed the
                             model as it was trained (`Preprocessing`);
  load_model(path)           an `EvalModel` (what the evaluators take) from the same.

`path` is
  WORKDIR[@STEP]  one of our training workdirs: its newest checkpoint that restores, or the one
                  at STEP (`mir_jax.train.init_from.split_step`, the parser init_from uses).
                  Parameters only: the train state's `params` and the frozen item are read, no
                  optimizer is built (`mir_jax.train.checkpoint.restore_params`). Preprocessing:
                  its config's tokenizer, image size/mean/std/mode, and the prompt template of
                  its training data (`training_template`);
  HF dir          `mir_jax.hf.load_pretrained` (HF or original LLaVA layout), its tokenizer (the
                  byte tokenizer when the directory has none, said on stdout), its
                  preprocessor_config.json (`mir_jax.data.images.image_config_from_hf`; CLIP's
                  mean/std and pad when it has none), template vicuna_v1 (LLaVA-1.5's).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

from mir_jax.data.images import ImageConfig, image_config_from_hf

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


class Loaded(NamedTuple):
    """`load_for_evaluation`'s result; unpacks as (config, model, preprocessing)."""

    config: Any  # mir_jax.models.LlavaConfig
    model: Any  # mir_jax.models.LlavaModel
    preprocessing: Preprocessing


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


def is_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "checkpoints"))


def _resolve(path: str, step: int | None) -> tuple[str, int | None]:
    """(directory, step) of 'WORKDIR', 'WORKDIR@STEP' or an HF directory; FileNotFoundError (one
    line) when it is neither a workdir nor an HF directory."""
    from mir_jax.train.init_from import split_step

    directory, at = split_step(path)
    if at is not None and step is not None and at != step:
        raise ValueError(f"{path!r} names step {at} but step={step} was asked for")
    step = at if step is None else step
    if not os.path.exists(directory):
        raise FileNotFoundError(f"model path {path!r} does not exist: not a mir-jax training workdir "
                                "nor a Hugging Face directory")
    if not is_workdir(directory):
        if step is not None:
            raise FileNotFoundError(f"{directory} is not a mir-jax training workdir (no checkpoints/): "
                                    "a step applies to workdirs only")
        if not os.path.exists(os.path.join(directory, "config.json")):
            raise FileNotFoundError(f"{directory} is neither a mir-jax training workdir (no checkpoints/) "
                                    "nor a Hugging Face directory (no config.json)")
    return directory, step


def _load_workdir(directory: str, step: int | None, mesh=None):
    """(LlavaConfig, model, the run's config) of a workdir's checkpoint."""
    from mir_jax.train import checkpoint

    _, run_config, model_config, model = checkpoint.restore_params(directory, step, mesh)
    return model_config, model, run_config


def load_weights(path: str, step: int | None = None, *, mesh=None):
    """(LlavaConfig, model) at `path` (see the module docstring): parameters only. For a
    workdir, `mesh` gives the parameters' shardings (default: replicated over all devices)."""
    directory, step = _resolve(path, step)
    if is_workdir(directory):
        return _load_workdir(directory, step, mesh)[:2]
    from mir_jax import hf

    return hf.load_pretrained(directory)


def run_image_config(run_config, model_config, image_mode: str | None = None) -> ImageConfig:
    """The pixels a training run fed its model (its image_mean/std, its data config's image
    mode, the tower's size): what the loop's own evaluations and `evaluate.py` both use."""
    from mir_jax.data.mixture import resolve_config

    data = run_config.get("data")
    mode = image_mode or (resolve_config(data)["image_mode"] if data is not None else "pad")
    return ImageConfig(size=model_config.vision.image_size, mean=tuple(run_config.image_mean),
                       std=tuple(run_config.image_std), mode=mode)


def _workdir_preprocessing(run_config, model_config, image_mode: str | None) -> Preprocessing:
    """What the run's data pipeline fed its model (its config: tokenizer, image_*, data)."""
    from mir_jax.data import load_tokenizer

    template, system = training_template(run_config.get("data"))
    image = run_image_config(run_config, model_config, image_mode)
    return Preprocessing(image, load_tokenizer(run_config.tokenizer or None), template, system)


def _hf_preprocessing(directory: str, model_config, image_mode: str | None) -> Preprocessing:
    """The directory's own tokenizer and preprocessor_config.json (defaults when absent)."""
    from mir_jax.data import ByteTokenizer, load_tokenizer

    try:
        image = image_config_from_hf(directory, mode=image_mode)
    except FileNotFoundError:
        image = ImageConfig(size=model_config.vision.image_size, mode=image_mode or "pad")
    if image.size != model_config.vision.image_size:
        # The encoder takes only its own size (the position embeddings fix it).
        print(f"[{os.path.basename(os.path.normpath(directory))}] preprocessor_config.json says {image.size} px, the "
              f"vision tower takes {model_config.vision.image_size} px: using the tower's")
        image = dataclasses.replace(image, size=model_config.vision.image_size, shortest_edge=None)
    if any(os.path.exists(os.path.join(directory, f)) for f in TOKENIZER_FILES):
        tokenizer = load_tokenizer(directory)
    else:
        tokenizer = ByteTokenizer()
        print(f"[{os.path.basename(os.path.normpath(directory))}] no tokenizer files; using the "
              "built-in byte tokenizer")
    return Preprocessing(image, tokenizer, "vicuna_v1", None)


def load_for_evaluation(path: str, step: int | None = None, *, image_mode: str | None = None,
                        mesh=None) -> Loaded:
    """(LlavaConfig, model, Preprocessing) at `path` (see the module docstring). image_mode
    overrides the checkpoint's pad/crop/resize. Errors are one line: FileNotFoundError (neither
    kind of directory), `mir_jax.train.checkpoint.CheckpointError` (no such step, with the
    available ones; no checkpoint restores; shapes differ from the run's config)."""
    directory, step = _resolve(path, step)
    if is_workdir(directory):
        model_config, model, run_config = _load_workdir(directory, step, mesh)
        return Loaded(model_config, model, _workdir_preprocessing(run_config, model_config, image_mode))
    from mir_jax import hf

    model_config, model = hf.load_pretrained(directory)
    return Loaded(model_config, model, _hf_preprocessing(directory, model_config, image_mode))


def load_model(path: str, *, template: str | None = None, image_mode: str | None = None,
               step: int | None = None) -> EvalModel:
    """The `EvalModel` at `path` ('WORKDIR', 'WORKDIR@STEP' or an HF directory; see the module
    docstring); `template` overrides the model's own prompt template. Errors as
    `load_for_evaluation`'s."""
    _, model, pre = load_for_evaluation(path, step, image_mode=image_mode)
    name = os.path.basename(os.path.normpath(path))
    return EvalModel(name, model, pre.tokenizer, pre.image, template or pre.template, pre.system, path=path)
