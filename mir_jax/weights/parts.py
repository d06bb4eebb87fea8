"""A model's parts (vision, connector, llm), and taking some of them from loaded weights.

`config.init_from`: "" (random), an HF / original-LLaVA directory, or WORKDIR[@STEP] (stage 1
-> stage 2 chaining). `config.init_parts`: "all" or a comma list of `vision`, `connector`,
`llm` (MoCa belongs to `llm`); the rest start fresh. A taken parameter missing or of another
shape in the source is one `InitError` line; parameters the source lacks start fresh and are
listed.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from flax import nnx

PARTS = {"vision": "vision_tower", "connector": "connector", "llm": "language_model"}


class InitError(ValueError):
    """init_from / init_parts cannot provide the weights; the message is one line."""


def parse_parts(spec: str) -> tuple[str, ...]:
    """'all' or 'vision,llm' -> the model's top-level parameter groups to take."""
    names = [p.strip() for p in (spec or "all").split(",") if p.strip()]
    if names == ["all"]:
        return tuple(PARTS.values())
    unknown = sorted(set(names) - set(PARTS))
    if unknown or not names:
        raise InitError(f"init_parts={spec!r}: unknown part(s) {unknown}; use 'all' or a comma list "
                        f"of {list(PARTS)}")
    return tuple(PARTS[n] for n in names)


def split_step(spec: str) -> tuple[str, int | None]:
    """'WORKDIR@STEP' -> (WORKDIR, STEP); anything else -> (spec, None). The one parser of the
    form (init_from, evaluate.py's --checkpoint/--compare, via `mir_jax.weights.load_weights`)."""
    path, at, step = spec.rpartition("@")
    if at and step.isdigit() and os.path.isdir(os.path.join(path, "checkpoints")):
        return path, int(step)
    return spec, None


def source_exists(spec: str) -> bool:
    path, _ = split_step(spec)
    return os.path.isdir(path)


def _flat(state) -> dict[tuple, np.ndarray]:
    return {tuple(str(k) for k in path): leaf for path, leaf in nnx.to_flat_state(state)}


def merge_params(fresh, source, parts: tuple[str, ...]) -> tuple[nnx.State, list[str]]:
    """`fresh` (a Param State) with every leaf under `parts` replaced by the source's.
    Returns (merged state, the paths that stayed fresh because the source lacks them)."""
    src = _flat(source)
    kept_fresh, out = [], []
    for path, leaf in nnx.to_flat_state(fresh):
        key = tuple(str(k) for k in path)
        if key[0] not in parts:
            out.append((path, leaf))
            continue
        if key not in src:
            kept_fresh.append(".".join(key))
            out.append((path, leaf))
            continue
        mine, theirs = leaf[...], src[key][...]
        if np.shape(mine) != np.shape(theirs):
            raise InitError(f"init_from parameter {'.'.join(key)} has shape {tuple(np.shape(theirs))} "
                            f"there, {tuple(np.shape(mine))} in config.model")
        value = np.asarray(jax.device_get(theirs)).astype(mine.dtype)
        out.append((path, leaf.replace(value) if hasattr(leaf, "replace") else value))
    return nnx.from_flat_state(out), kept_fresh


# Model-config fields that must agree for a part to be taken (compute choices such as dtype,
# remat or the attention implementation may differ; MoCa may be added).
_PART_CONFIG = {"vision_tower": ("vision", "vision_feature_layer", "vision_feature_select_strategy"),
                "connector": ("connector",),
                "language_model": ("text", "image_token_id", "pad_token_id", "eos_token_id")}


def config_differences(source: dict, target: dict, parts: tuple[str, ...]) -> list[str]:
    """'model.text.num_layers: 2 there, 3 here' for each field the taken parts need equal."""
    out = []

    def walk(a, b, prefix):
        if isinstance(a, dict) and isinstance(b, dict):
            for k in sorted(set(a) | set(b)):
                walk(a.get(k), b.get(k), f"{prefix}.{k}")
        elif a != b:
            out.append(f"{prefix}: {a!r} there, {b!r} here")

    for part in parts:
        for key in _PART_CONFIG[part]:
            walk(source.get(key), target.get(key), f"model.{key}")
    return out
