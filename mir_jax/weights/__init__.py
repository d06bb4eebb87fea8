"""Model weights: the one loader (`load_weights`), and the formats it reads and writes.

`load_weights(path)` takes WORKDIR (a training workdir's newest checkpoint that restores;
damaged newer steps are skipped with a warning), WORKDIR@STEP, or an HF / original-LLaVA
directory, and says which weights it loaded (`WeightsSource`). Formats: `hf` (HF read/write,
`build_stage1`), `checkpoint` (orbax train-state checkpoints), `parts` (taking some
top-level parts from loaded weights: `init_from` + `init_parts`), `export` (a run as an HF
directory).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, NamedTuple

from mir_jax.weights.parts import split_step


class WeightsError(FileNotFoundError):
    """The path names no weights that can be loaded; the message is one line."""


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Which weights a model holds.

    kind: "workdir" (a training checkpoint) or "hf" (an HF / original-LLaVA directory).
    path: the directory; step: the checkpoint step (workdirs); skipped: newer steps that did not
    restore and were passed over (damaged), newest first.
    """

    kind: str
    path: str
    step: int | None = None
    skipped: tuple[int, ...] = ()

    def describe(self) -> str:
        """One line for a console: 'WORKDIR at step 200 (step 300 damaged, skipped)'."""
        if self.kind != "workdir":
            return f"{self.path} (Hugging Face directory)"
        text = f"{self.path} at step {self.step}"
        if self.skipped:
            steps = ", ".join(map(str, self.skipped))
            text += f" (newer step{'s' if len(self.skipped) > 1 else ''} {steps} damaged, skipped)"
        return text

    def to_json(self) -> dict:
        return {"kind": self.kind, "path": self.path, "step": self.step, "skipped_steps": list(self.skipped)}


class Weights(NamedTuple):
    """`load_weights`'s result. run_config: the training run's config (workdirs), else None."""

    config: Any  # mir_jax.models.LlavaConfig
    model: Any  # mir_jax.models.LlavaModel
    source: WeightsSource
    run_config: Any = None


def is_workdir(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "checkpoints"))


def load_weights(path: str, *, step: int | None = None, mesh=None, **config_overrides) -> Weights:
    """The model at `path`: 'WORKDIR', 'WORKDIR@STEP' or an HF directory (module docstring).

    mesh: where a workdir's parameters land (default: replicated over all devices).
    config_overrides: model-config fields to replace (e.g. dtype="bfloat16", remat="full").
    Returns `Weights` (config, model, source, run_config). Errors are one line: WeightsError (no such path or
    kind), `checkpoint.CheckpointError` (no such step; nothing restores),
    `checkpoint.CheckpointMismatch` (shapes differ from the run's config).
    """
    directory, at = split_step(path)
    if at is not None and step is not None and at != step:
        raise ValueError(f"{path!r} names step {at} but step={step} was asked for")
    step = at if step is None else step
    if not os.path.exists(directory):
        raise WeightsError(f"model path {path!r} does not exist: not a mir-jax training workdir "
                           "(WORKDIR or WORKDIR@STEP) nor a Hugging Face directory")
    if is_workdir(directory):
        from mir_jax.weights import checkpoint

        restored = checkpoint.read_params(directory, step, mesh, **config_overrides)
        source = WeightsSource("workdir", directory, restored.step, tuple(restored.skipped))
        return Weights(restored.model_config, restored.model, source, restored.run_config)
    if step is not None:
        raise WeightsError(f"{directory} is not a mir-jax training workdir (no checkpoints/): "
                           "a step applies to workdirs only")
    if not os.path.exists(os.path.join(directory, "config.json")):
        raise WeightsError(f"{directory} is neither a mir-jax training workdir (no checkpoints/) "
                           "nor a Hugging Face directory (no config.json)")
    from mir_jax.weights import hf

    config, model = hf.read_pretrained(directory, **config_overrides)
    return Weights(config, model, WeightsSource("hf", directory))


__all__ = ["Weights", "WeightsError", "WeightsSource", "is_workdir", "load_weights"]
