"""The flat training loop behind `train.py` (big_vision style: one function, no callbacks).

`train_and_evaluate(config, workdir)`: check the config (`config_check`), build the mesh,
`Stepper`, data iterator and evaluators; resume from the newest checkpoint that restores, else
initialize (randomly or from `config.init_from`); then step, logging every `log_every` steps,
running each entry of `config.evals` every its `every` steps (`evaluations`), checkpointing
every `checkpoint.every` steps and on SIGTERM; at the end every evaluator, a checkpoint, the
plot and the MIR table. Time spent evaluating and saving is not counted in tokens/s and MFU.
Config keys: `configs/common.py`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from mir_jax.data import make_train_iterator
from mir_jax.data.tokenizer import load_tokenizer
from mir_jax.distributed import host_batch_slice
from mir_jax.models import LlavaConfig
from mir_jax.sharding import make_mesh
from mir_jax.train import metrics as metrics_lib
from mir_jax.train.config_check import ConfigError, check_config
from mir_jax.train.evaluations import Evaluations, loop_evals
from mir_jax.train.step import StepConfig, Stepper, global_batch
from mir_jax.weights.checkpoint import Checkpointer, StopSignal

log = logging.getLogger(__name__)


class NonFiniteError(RuntimeError):
    """Too many non-finite updates in a row."""


def _plain_config(config) -> dict:
    return json.loads(config.to_json_best_effort() if hasattr(config, "to_json_best_effort") else json.dumps(config))


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return f"{type(e).__name__}: {text.splitlines()[0]}" if text else type(e).__name__


def _check_tokenizer(tokenizer, model_cfg: LlavaConfig) -> None:
    if tokenizer.vocab_size > model_cfg.text.vocab_size:
        raise ConfigError(f"tokenizer {tokenizer.name!r} has {tokenizer.vocab_size} ids but the model's "
                          f"vocabulary is {model_cfg.text.vocab_size}: set --config.model.text.vocab_size="
                          f"{tokenizer.vocab_size} or use the model's own tokenizer")
    if tokenizer.image_token_id != model_cfg.image_token_id:
        raise ConfigError(f"tokenizer {tokenizer.name!r} has image token id {tokenizer.image_token_id} but "
                          f"config.model.image_token_id is {model_cfg.image_token_id}: set "
                          f"--config.model.image_token_id={tokenizer.image_token_id} or use the model's tokenizer")


class Setup:
    """Everything the loop needs, built and validated before any compilation."""

    def __init__(self, config, workdir: str):
        check_config(config)  # every impossible value and unset path in one message, first
        self.config, self.workdir = config, workdir
        self.model_config = LlavaConfig.from_dict(config.model)
        self.mesh = make_mesh(tuple(config.mesh))
        self.stepper = Stepper(self.model_config, config.trainable, config.optimizer, config.total_steps,
                               self.mesh, StepConfig(int(config.num_micro_batches), float(config.z_loss)))
        self.stepper.check_batch_size(int(config.batch_size))
        self.process_index, self.process_count = jax.process_index(), jax.process_count()
        if config.batch_size % self.process_count:
            raise ValueError(f"batch size {config.batch_size} does not split over {self.process_count} hosts")
        try:
            self.tokenizer = load_tokenizer(config.tokenizer or None)
        except Exception as e:  # noqa: BLE001 -- whatever transformers raises on files it cannot read
            raise ConfigError(f"tokenizer {config.tokenizer!r} does not load ({_first_line(e)}): "
                              "--config.tokenizer=DIR (the LLM's Hugging Face tokenizer directory)") from e
        _check_tokenizer(self.tokenizer, self.model_config)
        # Multi-host: each process reads the data shard of the batch rows its devices hold
        # (shard p of P when the batch axes span every host, as usual).
        self.data_shard, self.data_shard_count, self.local_batch = host_batch_slice(
            self.stepper.batch_sharding(1), int(config.batch_size))
        mc = self.model_config
        self.data_kwargs = dict(tokenizer=self.tokenizer, image_size=mc.vision.image_size,
                                mean=tuple(config.image_mean), std=tuple(config.image_std),
                                num_image_tokens=mc.num_image_tokens, seq_len=int(config.seq_len))
        self.train_iter = make_train_iterator(
            config.data, batch_size=self.local_batch, seed=int(config.seed),
            shard_index=self.data_shard, shard_count=self.data_shard_count, **self.data_kwargs)
        self.evals = loop_evals(config, self.stepper.data_parallel, self.process_count)
        self.checkpointer = Checkpointer(os.path.join(workdir, "checkpoints"),
                                         keep=int(config.checkpoint.keep),
                                         every=int(config.checkpoint.every),
                                         async_save=bool(config.checkpoint.get("async_save", True)))

    # ----- state ------------------------------------------------------------------------------
    def initial_state(self):
        """(start step, state, frozen): restored from the latest checkpoint, else fresh."""
        latest = self.checkpointer.latest_step()
        if latest is not None:
            abstract_state, abstract_frozen = self.stepper.abstract_state()
            step, state, frozen, _ = self.checkpointer.restore(abstract_state, abstract_frozen, self.train_iter)
            log.info("resumed from %s at step %d", self.checkpointer.directory, step)
            return step, state, frozen
        params = None
        if self.config.get("init_from"):
            params = self._initial_params(str(self.config.init_from))
        state, frozen = self.stepper.init(int(self.config.seed), params)
        return 0, state, frozen

    def _initial_params(self, spec: str):
        """The Param State to start from: `init_parts` of the model at `spec` over a fresh
        initialization (see `mir_jax.weights.parts`)."""
        from flax import nnx

        from mir_jax.weights import WeightsError, load_weights
        from mir_jax.weights import parts as init_lib

        try:
            parts = init_lib.parse_parts(str(self.config.get("init_parts") or "all"))
            loaded = load_weights(spec)
        except init_lib.InitError as e:
            raise ConfigError(str(e)) from e
        except WeightsError as e:
            raise ConfigError(f"init_from: {e}") from e
        except Exception as e:  # noqa: BLE001 -- no config.json, no weights, damaged checkpoint, ...
            raise ConfigError(f"init_from {spec!r} does not load ({_first_line(e)})") from e
        log.info("init_from %s", loaded.source.describe())
        source = loaded.model
        differ = init_lib.config_differences(source.config.to_dict(), self.model_config.to_dict(), parts)
        if differ:
            raise ConfigError(f"init_from {spec!r} is not config.model: {'; '.join(differ[:5])}"
                              + (f" ({len(differ) - 5} more)" if len(differ) > 5 else ""))
        theirs = nnx.state(source, nnx.Param)
        if parts == tuple(init_lib.PARTS.values()) and source.config.moca == self.model_config.moca:
            return theirs
        state, frozen = self.stepper.init(int(self.config.seed))
        fresh = jax.device_get(self.stepper.partition.combine(state["params"], frozen))
        try:
            merged, kept_fresh = init_lib.merge_params(fresh, theirs, parts)
        except init_lib.InitError as e:
            raise ConfigError(str(e)) from e
        log.info("init_from %s: %s taken%s", spec, ", ".join(parts),
                 f"; fresh (not in the source): {', '.join(kept_fresh)}" if kept_fresh else "")
        return merged


def _mfu_numbers(setup: Setup, batch: dict) -> tuple[int, float]:
    """(tokens per step, model FLOPs per token) for a batch (LLM positions, images included)."""
    b, s = batch["input_ids"].shape
    tokens = b * s * setup.data_shard_count
    images_per_token = float(np.sum(batch["image_mask"])) / (b * s)
    return tokens, metrics_lib.model_flops_per_token(setup.model_config, s, images_per_token)


@dataclasses.dataclass
class TrainResult:
    """What `train_and_evaluate` ends with.

    step: the last step trained; loss: the mean training loss of the last logged window;
    eval: the last held-out evaluation ({"loss", "tokens", "mir", "mir_per_layer", ...});
    downstream: the last score of each downstream evaluator ({"KEY/metric": value});
    plot: loss_mir.png (process 0); preempted / signal: stopped by a preemption notice (the
    signal number, None for `stop_at_step`); already_done: the workdir held the finished run.
    """

    step: int
    loss: float | None = None
    eval: dict[str, Any] = dataclasses.field(default_factory=dict)
    downstream: dict[str, float] = dataclasses.field(default_factory=dict)
    plot: str | None = None
    preempted: bool = False
    signal: int | None = None
    already_done: bool = False


class Throughput:
    """Tokens, model FLOPs and losses of the steps since the last report, over the time spent
    training: evaluation and checkpointing run inside `paused()` and are not counted."""

    def __init__(self, peak_flops: float):
        self.peak_flops = peak_flops
        self.reset()

    def reset(self) -> None:
        self.losses, self.tokens, self.flops, self.steps = [], 0, 0.0, 0
        self._start, self._paused = time.perf_counter(), 0.0

    def add_step(self, tokens: int, flops: float) -> None:
        self.tokens, self.flops, self.steps = self.tokens + tokens, self.flops + flops, self.steps + 1

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        try:
            yield
        finally:
            self._paused += time.perf_counter() - t

    def report(self) -> dict[str, float] | None:
        """{"loss", "tokens_per_s", "steps_per_s", "mfu"} of the window, then a new window;
        None when no step ran in it."""
        elapsed = time.perf_counter() - self._start - self._paused
        if not self.steps or elapsed <= 0:
            return None
        out = {"loss": float(np.mean(self.losses)) if self.losses else float("nan"),
               "tokens_per_s": self.tokens / elapsed, "steps_per_s": self.steps / elapsed,
               "mfu": self.flops / elapsed / self.peak_flops}
        self.reset()
        return out


def read_step_metrics(step_metrics, step: int, meter: Throughput, max_bad: int) -> dict:
    """A step's metrics on the host (a wait for that step); its loss goes to `meter` when it was
    finite. Raises NonFiniteError after `max_bad` skipped updates in a row (0: never)."""
    m = jax.device_get(step_metrics)
    if not bool(m["finite"]):
        log.warning("step %d: non-finite loss/gradient (loss=%s, grad_norm=%s); update skipped",
                    step, m["loss"], m["grad_norm"])
    else:
        meter.losses.append(float(m["loss"]))
    if int(m["bad_streak"]) >= max_bad > 0:
        raise NonFiniteError(f"{int(m['bad_streak'])} non-finite updates in a row (config.max_bad_steps="
                             f"{max_bad}) at step {step}; stopping. The last checkpoint holds no skipped update.")
    return m


def _start_run_files(setup: Setup) -> None:
    """config.json (with the library versions that ran it, under "versions") and the run's
    size, from process 0."""
    from mir_jax import provenance

    os.makedirs(setup.workdir, exist_ok=True)
    with open(os.path.join(setup.workdir, "config.json"), "w") as f:
        json.dump({**_plain_config(setup.config), "versions": provenance.versions()}, f, indent=1)
    log.info("%s", provenance.summary())
    trainable, frozen = setup.stepper.partition.counts()
    log.info("mesh %s; parameters: %s trainable, %s frozen", dict(setup.mesh.shape), f"{trainable:,}",
             f"{frozen:,}")


def train_and_evaluate(config, workdir: str, *, stop_at_step: int | None = None) -> TrainResult:
    """Runs (or resumes) training to `config.total_steps` (see the module docstring).

    `stop_at_step` behaves like a preemption notice arriving at that step (checkpoint, return):
    for tests and time-boxed jobs."""
    setup = Setup(config, workdir)
    stepper, checkpointer, main = setup.stepper, setup.checkpointer, setup.process_index == 0
    total, log_every, max_bad = int(config.total_steps), int(config.log_every), int(config.max_bad_steps)
    start, state, frozen = setup.initial_state()
    if start >= total:  # a finished run: rerunning it must change nothing (no metrics row, no event file)
        checkpointer.close()
        log.info("%s holds the finished run (step %d of total_steps %d); nothing to do", workdir, start, total)
        return TrainResult(step=start, already_done=True)
    if main:
        _start_run_files(setup)
    result = TrainResult(step=start)
    writer = metrics_lib.MetricWriter(workdir, active=main, resume_step=start or None)
    evaluations = Evaluations(setup, state, frozen, writer, result)  # the fixed record sets: may raise
    bar = tqdm(total=total, initial=start, disable=not main, dynamic_ncols=True, desc="train")
    peak = float(config.get("peak_flops") or 0) or metrics_lib.peak_flops_per_device()
    meter = Throughput(peak * jax.device_count())
    # Multi-host: a SIGTERM seen by one host must stop every host at the same step (the save is
    # collective); JAX's preemption notifier takes SIGTERM there and `reached_preemption` agrees.
    stop = StopSignal() if setup.process_count == 1 else StopSignal(signals=())
    plain_config = _plain_config(config)  # what every checkpoint records, converted once
    pending = None  # the last step's metrics, read one step late so that dispatch stays ahead
    try:
        for step in range(start + 1, total + 1):
            batch = next(setup.train_iter)
            tokens, flops_per_token = _mfu_numbers(setup, batch)
            state, step_metrics = stepper.train_step(state, frozen, global_batch(batch, stepper))
            meter.add_step(tokens, tokens * flops_per_token)
            bar.update(1)
            if pending is not None:
                read_step_metrics(*pending, meter, max_bad)
            pending = (step_metrics, step)
            if step % log_every == 0 or step == total:
                m = read_step_metrics(*pending, meter, max_bad)
                pending = None
                scalars = meter.report()
                if scalars:
                    scalars.update(grad_norm=float(m["grad_norm"]), skipped=int(m["skipped"]),
                                   lr=float(stepper.schedule(step - 1)), param_norm=float(m["param_norm"]))
                    writer.write(step, "train", scalars)
                    bar.set_postfix_str(f"loss {scalars['loss']:.3f}  tok/s {scalars['tokens_per_s']:,.0f}  "
                                        f"MFU {scalars['mfu']:.1%}")
                    result.step, result.loss = step, scalars["loss"]
            with meter.paused():
                if step < total:
                    evaluations.during_training(step, state, frozen)
                preempted = (bool(stop) or step == stop_at_step
                             or (setup.process_count > 1 and checkpointer.reached_preemption(step)))
                checkpointer.save(step, state, frozen, setup.train_iter, plain_config, force=preempted)
            if preempted:
                checkpointer.wait()
                log.info("stopped at step %d; checkpoint saved, rerun the same command to resume", step)
                result.step, result.preempted, result.signal = step, True, stop.received
                return result
        bar.close()
        evaluations.at_end(total, state, frozen)
        checkpointer.save(total, state, frozen, setup.train_iter, plain_config, force=True)
        checkpointer.wait()
        if main:
            writer.flush()
            result.plot = metrics_lib.plot_metrics(writer.path, os.path.join(workdir, "loss_mir.png"))
            for table in evaluations.mir_tables():
                print(table)
        result.step = total
        return result
    finally:
        bar.close()
        stop.restore()
        writer.close()
        checkpointer.close()
