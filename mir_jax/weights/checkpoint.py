"""Checkpoints with orbax: one step directory per save with four items, `state` (trainable
params, optimizer state, step, skip counters), `frozen` (frozen params), `data` (each host's
grain iterator state) and `config` (JSON, informational). Arrays are written by every host and
restored straight into the target shardings. `restore_newest` falls back from a damaged step
to the next older one with a one-line warning (a shape mismatch is an error, not damage);
`read_params` reads parameters only, for evaluation and init_from.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import os
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any, NamedTuple

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)

ARRAY_ITEMS = ("state", "frozen")  # StandardCheckpointHandler items (arrays + _METADATA)

class CheckpointError(RuntimeError):
    """No checkpoint restores, or one does not fit the config; the message is one line."""


class CheckpointMismatch(CheckpointError):
    """The checkpoint's parameter tree differs from the config's (not damage: no fallback)."""


def _cause(e: BaseException) -> str:
    """The first line of the innermost error (orbax wraps the real cause several times)."""
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip()
    line = text.splitlines()[0] if text else ""
    return f"{type(e).__name__}: {line[:300]}" if line else type(e).__name__


def _path_str(path) -> str:
    """A key path as 'a.b.0.c' whatever the container (dict key, sequence index, attribute)."""
    parts = []
    for k in path:
        for attr in ("key", "idx", "name"):
            if hasattr(k, attr):
                parts.append(str(getattr(k, attr)))
                break
    return ".".join(parts)


def _shapes(tree) -> dict[str, tuple]:
    return {_path_str(p): tuple(x.shape) for p, x in jax.tree_util.tree_flatten_with_path(tree)[0]}


def check_shapes(saved_tree, abstract_tree, item: str, step: int) -> None:
    """Raises CheckpointMismatch naming the first parameter whose shape (or presence) differs.

    saved_tree: the item's orbax metadata tree; abstract_tree: the config's ShapeDtypeStructs."""
    saved, want = _shapes(saved_tree), _shapes(abstract_tree)
    # Name a parameter first, not one of its optimizer moments.
    first = lambda keys: sorted(keys, key=lambda k: not k.startswith("params."))  # noqa: E731
    differ = first(k for k in want if k in saved and saved[k] != want[k])
    missing, extra = first(k for k in want if k not in saved), first(k for k in saved if k not in want)
    if not (differ or missing or extra):
        return
    if differ:
        k = differ[0]
        what = f"{item}.{k} has shape {saved[k]} in the checkpoint but {want[k]} in the config"
    elif missing:
        what = f"the config has {item}.{missing[0]}, the checkpoint does not"
    else:
        what = f"the checkpoint has {item}.{extra[0]}, the config does not"
    more = len(differ) + len(missing) + len(extra) - 1
    raise CheckpointMismatch(
        f"checkpoint step {step} does not fit the config: {what}" + (f" ({more} more differ)" if more else "")
        + "; the model, trainable or optimizer config changed since it was written: use the run's "
          "own config (its config.json) or a new --workdir")


def find_damage(step_dir, items) -> str | None:
    """A cheap look for common damage before orbax reads anything (orbax's own errors for it
    are far from the cause). None: looks whole."""
    for item in items:
        d = step_dir / item
        if not d.is_dir():
            return f"{item}/ is missing"
        if item in ARRAY_ITEMS and not (d / "_METADATA").exists():
            return f"{item}/_METADATA is missing"
        if item == "data":
            files = sorted(d.glob("*.json"))
            if not files:
                return "data/ holds no iterator state"
            for f in files:
                try:
                    json.loads(f.read_text())
                except (ValueError, OSError) as e:
                    return f"data/{f.name} is not a JSON iterator state ({_cause(e)})"
    return None


_ORBAX_PACKAGE = f"{os.sep}orbax{os.sep}"  # in the path of every orbax source file


def _is_orbax_coroutine(obj) -> bool:
    code = getattr(obj, "cr_code", None)
    return code is not None and _ORBAX_PACKAGE in code.co_filename


def _is_closed_loop_callback(unraisable) -> bool:
    """A read that finished after orbax closed its event loop: tensorstore's completion callback
    fails in asyncio's call_soon_threadsafe."""
    if not (isinstance(unraisable.exc_value, RuntimeError) and str(unraisable.exc_value) == "Event loop is closed"):
        return False
    frames = traceback.extract_tb(unraisable.exc_traceback)
    return any(f.name == "call_soon_threadsafe" for f in frames)


@contextlib.contextmanager
def _quiet_abandoned_reads(directory, failed: list[int]):
    """Drops the traceback noise of orbax's abandoned array reads while a damaged step fails
    (coroutine "Exception ignored", asyncio "never retrieved", "Event loop is closed"), which the
    one-line warning already covers. `failed`: the caller's list of failed steps (read on exit).
    """
    previous = sys.unraisablehook

    def hook(unraisable):
        if not (_is_orbax_coroutine(unraisable.object) or _is_closed_loop_callback(unraisable)):
            previous(unraisable)

    def not_orbax_read(record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not ("exception was never retrieved" in message
                    and (str(directory) in message or _ORBAX_PACKAGE in message))

    asyncio_log = logging.getLogger("asyncio")
    sys.unraisablehook = hook
    asyncio_log.addFilter(not_orbax_read)
    try:
        yield
    finally:
        if failed:
            gc.collect()  # collect the abandoned reads now, while their noise is still dropped
            time.sleep(0.2)  # reads still in flight in tensorstore (no handle to wait on) end here
        asyncio_log.removeFilter(not_orbax_read)
        sys.unraisablehook = previous


def restore_newest(directory, steps, restore_one: Callable[[int], Any]) -> tuple[int, Any, list[int]]:
    """Calls `restore_one(step)` for `steps`, newest first, until one returns.

    A step that raises gets a one-line warning and the next older one is tried; a
    CheckpointMismatch is raised at once. Returns (step, restore_one's result, the newer steps
    that failed). Raises CheckpointError (one line) when no step restores, FileNotFoundError
    when there are none."""
    steps = sorted(steps, reverse=True)
    if not steps:
        raise FileNotFoundError(f"no checkpoint in {directory}")
    failed, causes = [], []
    with _quiet_abandoned_reads(directory, failed):
        for step in steps:
            try:
                return step, restore_one(step), failed
            except CheckpointMismatch:
                raise
            except Exception as e:  # noqa: BLE001 -- any failure to read a step is damage to report
                cause = _cause(e)
                older = [s for s in steps if s < step]
                log.warning("checkpoint step %d in %s does not restore (%s); %s", step, directory, cause,
                            f"trying step {older[0]}" if older else "no older checkpoint")
                failed.append(step)
                causes.append(f"step {step}: {cause}")
    raise CheckpointError(f"no checkpoint in {directory} restores ({'; '.join(causes)}); nothing was "
                          "deleted: move the directory aside to start afresh")


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
        items = dict(state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(data_iterator),
                     config=ocp.args.JsonSave(config))
        if frozen:  # a run that trains everything has no frozen item (orbax cannot save an empty tree)
            items["frozen"] = ocp.args.StandardSave(frozen)
        return bool(self.manager.save(step, args=ocp.args.Composite(**items), force=True))

    def restore(self, abstract_state, abstract_frozen, data_iterator, step: int | None = None):
        """Restores (state, frozen) into the abstract targets (ShapeDtypeStructs with shardings)
        and sets `data_iterator`'s position. Returns (step, state, frozen, config).

        step None: the newest step that restores; damaged newer steps are renamed
        `<step>.damaged` so this run can save those steps again."""
        def restore_one(s):
            damage = find_damage(self.manager.directory / str(s),
                                 ("state", "frozen", "data", "config") if abstract_frozen else ("state", "data", "config"))
            if damage:
                raise CheckpointError(damage)
            meta = self.manager.item_metadata(s)
            check_shapes(meta["state"], abstract_state, "state", s)
            items = dict(state=ocp.args.StandardRestore(abstract_state),
                         data=grain.checkpoint.CheckpointRestore(data_iterator), config=ocp.args.JsonRestore())
            if abstract_frozen:
                check_shapes(meta["frozen"], abstract_frozen, "frozen", s)
                items["frozen"] = ocp.args.StandardRestore(abstract_frozen)
            return self.manager.restore(s, args=ocp.args.Composite(**items))

        steps = self.manager.all_steps() if step is None else [step]
        step, out, damaged = restore_newest(self.manager.directory, steps, restore_one)
        if damaged:
            self._set_aside(damaged)
        return step, out["state"], out["frozen"] if abstract_frozen else {}, out["config"]

    def _set_aside(self, steps) -> None:
        """Renames damaged step directories `<step>.damaged[.n]`, which orbax ignores."""
        if jax.process_index() == 0:
            for s in steps:
                src = self.manager.directory / str(s)
                dst, n = self.manager.directory / f"{s}.damaged", 1
                while dst.exists():
                    dst, n = self.manager.directory / f"{s}.damaged.{n}", n + 1
                src.rename(dst)
                log.warning("kept the damaged checkpoint step %d as %s", s, dst)
        if jax.process_count() > 1:
            ocp.multihost.sync_global_processes("mir_jax_set_aside_damaged")
        self.manager.reload()

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
    """Turns SIGTERM (preemption) / SIGINT into a flag the train loop polls between steps, so it
    can save and exit cleanly."""

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


def _workdir_checkpoints(workdir: str) -> str:
    """WORKDIR/checkpoints (FileNotFoundError, one line, when there is none)."""
    directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"{workdir} has no checkpoints/ directory: not a mir-jax training workdir")
    return directory


def abstract_params(model_config, recipe, mesh):
    """(graphdef, partition, trainable, frozen): trainable/frozen as {key: ShapeDtypeStruct} in
    `mesh`'s shardings, split by `recipe`, from the model config alone (nothing allocated)."""
    from mir_jax.models.partition import partition_model

    graphdef, params, partition = partition_model(model_config, recipe)
    trainable, frozen = jax.eval_shape(partition.split, params)
    trainable_sh, frozen_sh = partition.shardings(mesh)
    add = lambda a, sh: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sh)  # noqa: E731
    return (graphdef, partition, jax.tree.map(add, trainable, trainable_sh),
            jax.tree.map(add, frozen, frozen_sh))


def _restore_args(tree):
    """PyTreeRestore of exactly `tree`'s leaves (ShapeDtypeStructs with shardings)."""
    return ocp.args.PyTreeRestore(item=tree, restore_args=ocp.checkpoint_utils.construct_restore_args(tree),
                                  partial_restore=True)


class RestoredParams(NamedTuple):
    """`read_params`' result: the step read, the newer steps skipped as damaged (newest first),
    the run's config, its model config (with overrides) and the model."""

    step: int
    skipped: list[int]
    run_config: Any
    model_config: Any
    model: Any


def read_params(workdir: str, step: int | None = None, mesh=None, **config_overrides) -> RestoredParams:
    """The parameters (no optimizer) of a workdir's checkpoint, the newest that restores or `step`,
    into `mesh`'s shardings (default: replicated); `load_weights` is the public way in. Raises, in
    one line, FileNotFoundError, CheckpointError or CheckpointMismatch.
    """
    import ml_collections
    from flax import nnx

    from mir_jax.models import LlavaConfig
    from mir_jax.sharding import make_mesh

    manager = ocp.CheckpointManager(_workdir_checkpoints(workdir), item_handlers={
        "state": ocp.PyTreeCheckpointHandler(), "frozen": ocp.PyTreeCheckpointHandler(),
        "config": ocp.JsonCheckpointHandler()})
    steps = sorted(manager.all_steps())
    if step is not None and step not in steps:
        manager.close()
        raise CheckpointError(f"{workdir} has no checkpoint at step {step}; its steps: "
                              + (", ".join(map(str, steps)) or "none"))
    mesh = mesh or make_mesh((jax.device_count(), 1, 1))

    def restore_one(s):
        step_dir = manager.directory / str(s)
        damage = find_damage(step_dir, ("state", "config"))
        if damage:
            raise CheckpointError(damage)
        config = ml_collections.ConfigDict(
            manager.restore(s, args=ocp.args.Composite(config=ocp.args.JsonRestore()))["config"])
        model_config = LlavaConfig.from_dict(config.model).replace(**config_overrides)
        graphdef, partition, trainable, frozen = abstract_params(model_config, config.trainable, mesh)
        meta = manager.item_metadata(s)
        # Compared as the train state names them ("state.params.<key>"), optimizer left out.
        check_shapes({"params": meta["state"]["params"]}, {"params": trainable}, "state", s)
        items = {"state": _restore_args({"params": trainable})}
        if frozen:  # a run that trained everything saved no frozen item
            damage = find_damage(step_dir, ("frozen",))
            if damage:
                raise CheckpointError(damage)
            check_shapes(meta["frozen"], frozen, "frozen", s)
            items["frozen"] = _restore_args(frozen)
        out = manager.restore(s, args=ocp.args.Composite(**items))
        params = partition.combine(out["state"]["params"], out["frozen"] if frozen else {})
        return config, model_config, nnx.merge(graphdef, params)

    from absl import logging as absl_logging

    verbosity = absl_logging.get_verbosity()
    # Orbax warns twice per restore that the data item "could not be restored"; not asked for here.
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        step, (config, model_config, model), skipped = restore_newest(
            manager.directory, steps if step is None else [step], restore_one)
    finally:
        absl_logging.set_verbosity(verbosity)
        manager.close()
    log.info("loaded %s at step %d", manager.directory, step)
    return RestoredParams(step, skipped, config, model_config, model)

