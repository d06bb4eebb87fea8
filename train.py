r"""Train a LLaVA-style model; MIR is tracked as a training curve.

    python train.py --config=configs/mm1_mix.py:runlocal --workdir=/tmp/mir_jax_runlocal

--config=FILE[:ARG] picks a recipe (configs/*.py, ARG e.g. "runlocal"); --config.a.b=VALUE
overrides any key (an unknown key is an error; a list-valued key takes a JSON list,
--config.data.sources='[{"type": "llava", "path": "train.json", "image_folder": "images"}]').
The whole config is checked before anything heavy: one message lists every impossible value,
unset path (tokenizer, init_from) and missing data file, with the override that sets it.
Rerunning the same command resumes from the newest checkpoint in --workdir that restores (a
damaged one is reported and kept); rerunning a finished run changes nothing. In the workdir:
checkpoints/, metrics.jsonl, tensorboard/, loss_mir.png, config.json.

Exit status: 0 done (or already done); 143 (128 + SIGTERM) stopped by SIGTERM, e.g. a
preemption, after saving a checkpoint at the step it prints (rerun the same command to resume);
1 any error (a one-line message for bad config, data or checkpoints).

Multi-host: launch the same command on every host with --coordinator_address=HOST:PORT
(process 0's machine), --num_processes=N and --process_id=I (or $JAX_COORDINATOR_ADDRESS,
$JAX_NUM_PROCESSES, $JAX_PROCESS_ID); on SLURM, Open MPI and Cloud TPU JAX detects them
(see mir_jax/distributed.py).
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

from mir_jax.train.config_check import register_list_overrides

register_list_overrides()  # before the flags parse: --config.data.sources='[...]'
_CONFIG = config_flags.DEFINE_config_file("config", None, "Recipe: configs/X.py[:arg].", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Checkpoints, metrics and plots go here.")
_COORDINATOR = flags.DEFINE_string("coordinator_address", None,
                                   "Multi-process: process 0's HOST:PORT (else $JAX_COORDINATOR_ADDRESS).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None,
                                      "Multi-process: number of processes (else $JAX_NUM_PROCESSES).")
_PROCESS_ID = flags.DEFINE_integer("process_id", None,
                                   "Multi-process: this process's index (else $JAX_PROCESS_ID).")
_DRY_RUN = flags.DEFINE_bool("dry_run", False,
                             "Compile the sharded train/eval steps abstractly and report per-device memory "
                             "against --hbm_gb; writes nothing (exit 0 fits, 3 does not; mir_jax/train/dry_run.py).")
_NUM_DEVICES = flags.DEFINE_integer("num_devices", None, "--dry_run: on this many fake CPU devices.")
_TOPOLOGY = flags.DEFINE_string("topology", None, "--dry_run: for this TPU topology (needs libtpu).")
_HBM_GB = flags.DEFINE_float("hbm_gb", 16.0, "--dry_run: memory per device, GB (2**30 bytes).")
flags.mark_flags_as_required(["config"])
flags.register_validator("workdir", lambda v: v is not None or "--dry_run" in sys.argv,
                         message="--workdir is required (except with --dry_run)")


def dry_run(config) -> int:
    """train.py --dry_run (see mir_jax/train/dry_run.py): fake devices are set before JAX starts."""
    from mir_jax.train import dry_run as dr
    from mir_jax.train.config_check import ConfigError

    try:
        if _NUM_DEVICES.value is not None:
            dr.configure_fake_devices(_NUM_DEVICES.value)
        return dr.run_cli(config, dr.Options(_NUM_DEVICES.value, _TOPOLOGY.value, _HBM_GB.value))
    except (dr.DryRunError, ConfigError) as e:
        sys.exit(f"train.py --dry_run: {e}")


def check_overrides(argv: list[str]) -> None:
    """Exits with a clear message when a --config.KEY override names a key the recipe lacks
    (before flag parsing, which would otherwise fail with a bare AttributeError), or when the
    recipe itself refuses its argument with a ValueError (config_flags would print a traceback)."""
    spec = next((a.split("=", 1)[1] for a in argv if a.startswith("--config=")), None)
    if spec is None:
        return
    from mir_jax.train.config_check import load_recipe, unknown_key

    try:
        config = load_recipe(spec)
    except ValueError as e:  # the recipe refuses this argument (e.g. stage0 at full size)
        sys.exit(f"train.py: --config={spec}: {e}")
    except Exception:  # noqa: BLE001 -- config_flags reports problems with the file itself
        return
    for a in argv:
        if a.startswith("--config.") and "=" in a:
            problem = unknown_key(config, a[len("--config."):].split("=", 1)[0])
            if problem:
                sys.exit(f"train.py: {problem} in {a!r}")

def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if _DRY_RUN.value:
        sys.exit(dry_run(_CONFIG.value))
    import jax

    from mir_jax import distributed

    try:
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
    except distributed.DistributedSetupError as e:
        sys.exit(f"train.py: {e}")
    from mir_jax import compile_cache

    compile_cache.enable()  # a rerun or resume loads its compiled programs from disk
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every save at INFO
    logging.getLogger("mir_jax").setLevel(logging.INFO)
    from mir_jax.data import DataError
    from mir_jax.train.config_check import ConfigError
    from mir_jax.train.loop import NonFiniteError, train_and_evaluate
    from mir_jax.weights.checkpoint import CheckpointError

    try:
        result = train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except (ConfigError, DataError, CheckpointError, NonFiniteError) as e:
        sys.exit(f"train.py: {e}")  # input the user can fix: one line, no traceback
    if result.already_done:
        print(f"train.py: {_WORKDIR.value} already holds the finished run (step {result.step}); "
              "nothing to do")
        return
    if result.preempted:
        # Not "done": the eval numbers in hand are stale. 128 + signal, as a shell reports it.
        import signal

        signum = int(result.signal or signal.SIGTERM)
        print(f"train.py: stopped by {signal.Signals(signum).name} at step {result.step}; checkpoint "
              "saved, rerun the same command to resume", flush=True)
        sys.exit(128 + signum)
    if jax.process_index() == 0:
        ev = result.eval
        parts = [f"step {result.step}"]
        if result.loss is not None:
            parts.append(f"train loss {result.loss:.4f}")
        if "loss" in ev:
            parts.append(f"held-out loss {ev['loss']:.4f}")
        if "mir" in ev:
            parts.append(f"MIR {ev['mir']:.4f}")
        print("done: " + ", ".join(parts) + (f"; plot {result.plot}" if result.plot else ""))


if __name__ == "__main__":
    check_overrides(sys.argv)
    app.run(main)
