"""Checkpoints with orbax: train state, frozen params, data-iterator state and config.

One step directory per save, four items:
  state   the train state pytree (trainable params, optimizer state, step, skip counters);
  frozen  the frozen parameters (they may come from a pretrained model, so they are saved too);
  data    every host's grain iterator state (grain's handler: one JSON per process);
  config  the run's config as JSON (what produced the checkpoint; informational on restore).

Arrays are written by all hosts (each its own shards) and restored straight into the
shardings of the abstract target, so a restart never materializes a full copy on one device.
A save is committed atomically by orbax (a crash mid-save leaves the previous step intact).
"""

from __future__ import annotations

import logging
import signal
import threading
from typing import Any

import grain
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class Checkpointer:
    """orbax CheckpointManager for the training loop.

    Args:
      directory: where step directories go (created if missing).
      keep: how many recent checkpoints to keep.
      every: save every this many steps (`maybe_save`); `save(force=True)` saves regardless.
      async_save: write arrays in a background thread (the train loop keeps going).
    """

    def __init__(self, directory: str, *, keep: int = 3, every: int = 1000, async_save: bool = True):
        self.every = int(every)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=async_save)
        self.manager = ocp.CheckpointManager(
            directory, options=options,
            item_handlers={"state": ocp.StandardCheckpointHandler(),
                           "frozen": ocp.StandardCheckpointHandler(),
                           "data": grain.checkpoint.CheckpointHandler(),
                           "config": ocp.JsonCheckpointHandler()})

    @property
    def directory(self):
        return self.manager.directory

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, step: int, state, frozen, data_iterator, config: dict[str, Any],
             *, force: bool = False) -> bool:
        """Saves step `step` (when due, or always with force). Returns whether it saved."""
        if not force and (self.every <= 0 or step % self.every):
            return False
        if step in self.manager.all_steps():
            return False
        args = ocp.args.Composite(
            state=ocp.args.StandardSave(state), frozen=ocp.args.StandardSave(frozen),
            data=grain.checkpoint.CheckpointSave(data_iterator),
            config=ocp.args.JsonSave(config))
        return bool(self.manager.save(step, args=args, force=True))

    def restore(self, abstract_state, abstract_frozen, data_iterator, step: int | None = None):
        """Restores (state, frozen) into the given abstract targets (ShapeDtypeStructs with
        shardings) and sets `data_iterator`'s position. Returns (step, state, frozen, config)."""
        step = self.manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state),
            frozen=ocp.args.StandardRestore(abstract_frozen),
            data=grain.checkpoint.CheckpointRestore(data_iterator),
            config=ocp.args.JsonRestore())
        out = self.manager.restore(step, args=args)
        return step, out["state"], out["frozen"], out["config"]

    def reached_preemption(self, step: int) -> bool:
        """True on every host once a preemption notice arrived (multi-host runs)."""
        return bool(self.manager.reached_preemption(step))

    def wait(self) -> None:
        """Blocks until pending async saves are committed."""
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


class StopSignal:
    """Turns SIGTERM (preemption) / SIGINT into a flag the train loop polls between steps, so the
    loop can save a checkpoint and exit cleanly instead of dying mid-step."""

    def __init__(self, signals=(signal.SIGTERM,)):
        self.received: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for s in signals:
                self._previous[s] = signal.signal(s, self._handle)

    def _handle(self, signum, frame):
        log.warning("received signal %d: saving a checkpoint and stopping after this step", signum)
        self.received = signum

    def __bool__(self) -> bool:
        return self.received is not None

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h)
        self._previous = {}


def load_for_evaluation(workdir: str, step: int | None = None):
    """(LlavaConfig, model, preprocessing) from a training workdir's checkpoint (latest by default).

    The run's config is read from the checkpoint itself; parameters are restored straight into
    single-host shardings (trainable and frozen parts merged back into one model). The
    preprocessing dict holds what the data pipeline needs to feed this model as it was trained:
    tokenizer, image_size, mean, std, image_mode.
    """
    import os

    import jax
    import ml_collections

    from mir_jax.data import load_tokenizer
    from mir_jax.sharding import make_mesh
    from mir_jax.train_step import StepConfig, Stepper

    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir} has no checkpoints/ directory: not a mir-jax training workdir")
    manager = ocp.CheckpointManager(directory, item_handlers={
        "state": ocp.StandardCheckpointHandler(), "frozen": ocp.StandardCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler()})
    step = manager.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    config = ml_collections.ConfigDict(
        manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
    mesh = make_mesh((jax.device_count(), 1, 1))
    stepper = Stepper(config.model, config.trainable, config.optimizer, int(config.total_steps), mesh,
                      StepConfig(int(config.num_micro_batches), float(config.z_loss)))
    abstract_state, abstract_frozen = stepper.abstract_state()
    out = manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state),
        frozen=ocp.args.StandardRestore(abstract_frozen)))
    manager.close()
    model = stepper.model(out["state"], out["frozen"])
    log.info("loaded %s at step %d", directory, step)
    preprocessing = dict(tokenizer=load_tokenizer(config.tokenizer or None),
                         image_size=stepper.config.vision.image_size,
                         mean=tuple(config.image_mean), std=tuple(config.image_std),
                         image_mode=config.data.get("image_mode", "pad") if "data" in config else "pad")
    return stepper.config, model, preprocessing
