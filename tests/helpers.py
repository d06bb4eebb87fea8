"""Helpers several test files share: parameters as flat dicts, and running a command-line tool."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def flat_params(tree) -> dict[str, np.ndarray]:
    """{"a/b/c": array} of a pytree of parameters (an nnx pure dict, an orbax restore), with
    "/"-joined names (orbax's restored trees spell some levels "a.b")."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {"/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path).replace(".", "/"):
            np.asarray(jax.device_get(v)) for path, v in leaves}


def saved_params(workdir, step) -> dict[str, np.ndarray]:
    """Trainable + frozen parameters of a checkpoint as orbax stored them: a raw read of the
    files, each item restored whole (no target, no model config involved)."""
    import orbax.checkpoint as ocp

    ckpt = ocp.StandardCheckpointer()
    step_dir = os.path.join(workdir, "checkpoints", str(step))
    out = flat_params(ckpt.restore(os.path.join(step_dir, "state"))["params"])
    if os.path.isdir(os.path.join(step_dir, "frozen")):
        out.update(flat_params(ckpt.restore(os.path.join(step_dir, "frozen"))))
    return out


def model_params(model) -> dict[str, np.ndarray]:
    """The nnx.Param leaves of a model, flat as `flat_params` names them."""
    from flax import nnx

    return flat_params(nnx.to_pure_dict(nnx.state(model, nnx.Param)))


def start_params(config, workdir) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(the parameters a run of `config` in `workdir` starts from, a fresh initialization with
    its seed), without training a step."""
    from flax import nnx

    from mir_jax.train.loop import Setup

    setup = Setup(config, str(workdir))
    try:
        def combine(state, frozen):
            return flat_params(nnx.to_pure_dict(setup.stepper.partition.combine(state["params"], frozen)))

        start = combine(*setup.initial_state()[1:])
        fresh = combine(*setup.stepper.init(int(config.seed)))
        return start, fresh
    finally:
        setup.checkpointer.close()


def run_tool(script: str, *args, cwd=None, timeout: int = 600, **env_extra) -> subprocess.CompletedProcess:
    """`python SCRIPT ARGS` (train.py, evaluate.py, study.py; `-m`, MODULE for a module's command
    line) on the CPU, output captured."""
    env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="", **env_extra)
    target = [script] if script == "-m" else [os.path.join(ROOT, script)]
    return subprocess.run([sys.executable, *target, *args], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=timeout)
