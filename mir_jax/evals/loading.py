"""`load_model(path)`: an `EvalModel` from a mir-jax training workdir or a Hugging Face LLaVA
directory, with what it takes to feed it as it was trained.

  workdir   the newest checkpoint that restores (parameters only: no optimizer built), its
            config's tokenizer, image size/mean/std/mode, and the prompt template of its
            training data (`training_template`);
  HF dir    `mir_jax.hf.load_pretrained` (HF or original LLaVA layout), its tokenizer (the
            byte tokenizer when the directory has none, said on stdout), its
            preprocessor_config.json, template vicuna_v1 (LLaVA-1.5's) unless given.
"""

from __future__ import annotations

import os

from mir_jax.data.images import CLIP_MEAN, CLIP_STD, ImageConfig

from .base import EvalModel

TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


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


def load_model(path: str, *, template: str | None = None, image_mode: str | None = None,
               step: int | None = None) -> EvalModel:
    """The model at `path` (see the module docstring). FileNotFoundError (one line) when the
    path is neither a workdir nor an HF directory; `mir_jax.train.checkpoint.CheckpointError` when no
    checkpoint restores."""
    from mir_jax.data import ByteTokenizer, load_tokenizer

    if not os.path.exists(path):
        raise FileNotFoundError(f"model path {path!r} does not exist")
    name = os.path.basename(os.path.normpath(path))
    if is_workdir(path):
        from mir_jax.train import checkpoint

        cfg, model, pre = checkpoint.load_for_evaluation(path, step)
        run_template, system = training_template(pre.get("data"))
        image = ImageConfig(size=pre["image_size"], mean=tuple(pre["mean"]), std=tuple(pre["std"]),
                            mode=image_mode or pre["image_mode"])
        return EvalModel(name, model, pre["tokenizer"], image, template or run_template, system, path=path)
    if not os.path.exists(os.path.join(path, "config.json")):
        raise FileNotFoundError(f"{path} is neither a mir-jax training workdir (no checkpoints/) "
                                "nor a Hugging Face directory (no config.json)")
    from mir_jax import hf

    cfg, model = hf.load_pretrained(path)
    try:
        proc = hf.load_image_processing(path)
    except FileNotFoundError:
        proc = None
    if any(os.path.exists(os.path.join(path, f)) for f in TOKENIZER_FILES):
        tokenizer = load_tokenizer(path)
    else:
        tokenizer = ByteTokenizer()
        print(f"[{name}] no tokenizer files; using the built-in byte tokenizer")
    mode = image_mode or ("pad" if proc is None or proc.pad_to_square
                          else "crop" if proc.do_center_crop else "resize")
    image = ImageConfig(size=cfg.vision.image_size, mean=tuple(proc.image_mean) if proc else CLIP_MEAN,
                        std=tuple(proc.image_std) if proc else CLIP_STD, mode=mode)
    return EvalModel(name, model, tokenizer, image, template or "vicuna_v1", None, path=path)
