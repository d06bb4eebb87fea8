"""The loss, the optimizer, and the jitted, sharded train and eval steps (`Stepper`).

State (a plain pytree, checkpointed as is): {"step", "params" (trainable only, `partition`),
"opt_state", "skipped" (non-finite updates skipped), "bad_streak" (of them in a row)}; `frozen`
holds the frozen parameters, an input to every step, never updated. Batches follow
the data contract (`mir_jax.data.pipeline`) and are sharded on the batch axis over ("data", "fsdp").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mir_jax.evals.mir import mir_forward
from mir_jax.models import LlavaConfig, LlavaModel
from mir_jax.models.backend import on_cpu
from mir_jax.models.forward import LOSS_INPUTS, forward, loss_sums
from mir_jax.models.partition import partition_model
from mir_jax.sharding import (
    LOGICAL_AXIS_RULES,
    batch_axes,
    batch_sharding,
    data_parallel_size,
    use_mesh,
)


# ---------------------------------------------------------------------------------------------
# Optimizer
# ---------------------------------------------------------------------------------------------
def learning_rate_schedule(opt: Mapping, total_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `lr` over `warmup_steps`, cosine decay to `lr * end_factor`."""
    lr, warmup = float(opt["lr"]), int(opt["warmup_steps"])
    decay = max(int(total_steps) - warmup, 1)
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup, warmup + decay,
                                              end_value=lr * float(opt.get("end_factor", 0.0)))


def make_optimizer(opt: Mapping, total_steps: int, decay_mask: Mapping[str, bool]):
    """Global-norm clipping, then AdamW with decay masked off for norms/biases/MoCa."""
    parts = []
    if opt.get("clip_norm"):
        parts.append(optax.clip_by_global_norm(float(opt["clip_norm"])))
    parts.append(optax.adamw(learning_rate_schedule(opt, total_steps), b1=float(opt["b1"]),
                             b2=float(opt["b2"]), eps=float(opt["eps"]),
                             weight_decay=float(opt["weight_decay"]), mask=dict(decay_mask)))
    return optax.chain(*parts)


# ---------------------------------------------------------------------------------------------
# The step
# ---------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class StepConfig:
    num_micro_batches: int = 1
    z_loss: float = 0.0


class Stepper:
    """Builds the model's functional pieces and the jitted train/eval steps on a mesh.

    Args:
      model_config: LlavaConfig (or dict).
      recipe: the trainable recipe (see `partition`).
      opt: optimizer config (lr, warmup_steps, end_factor, b1, b2, eps, weight_decay, clip_norm).
      total_steps: the schedule's length.
      mesh: the device mesh; step: StepConfig.
    """

    def __init__(self, model_config, recipe, opt: Mapping, total_steps: int, mesh: Mesh,
                 step: StepConfig = StepConfig(), rules=LOGICAL_AXIS_RULES):
        self.config = LlavaConfig.from_dict(model_config) if not isinstance(model_config, LlavaConfig) else model_config
        self.mesh, self.rules, self.step_config = mesh, rules, step
        # Built without an active mesh: parameters only get their sharding from `out_shardings`
        # below (no eager per-variable placement, no full copy on one device).
        self.graphdef, abstract_params, self.partition = partition_model(self.config, recipe)
        self.schedule = learning_rate_schedule(opt, total_steps)
        self.tx = make_optimizer(opt, total_steps, self.partition.decay_mask())
        self.param_shardings, self.frozen_shardings = self.partition.shardings(mesh, rules)
        self.replicated = NamedSharding(mesh, PartitionSpec())
        abstract_train, _ = jax.eval_shape(self.partition.split, abstract_params)
        abstract_opt = jax.eval_shape(self.tx.init, abstract_train)
        opt_shardings = optax.tree_map_params(
            self.tx, lambda _, s: s, abstract_opt, self.param_shardings,
            transform_non_params=lambda _: self.replicated)
        self.state_shardings = {"step": self.replicated, "params": self.param_shardings,
                                "opt_state": opt_shardings, "skipped": self.replicated,
                                "bad_streak": self.replicated}
        self._train_step = self._init = None

    # ----- shapes and shardings ------------------------------------------------------------
    @property
    def batch_axes(self) -> tuple[str, ...]:
        """The mesh axes of the logical "batch" axis (from the rules table)."""
        return batch_axes(self.rules)

    @property
    def data_parallel(self) -> int:
        """How many ways a batch splits on this mesh (`sharding.data_parallel_size`)."""
        return data_parallel_size(self.mesh, self.rules)

    def batch_sharding(self, ndim: int) -> NamedSharding:
        return batch_sharding(self.mesh, ndim, self.rules)

    def check_batch_size(self, global_batch: int) -> None:
        """Clear error (before compiling) when the batch does not split over the mesh."""
        n = self.step_config.num_micro_batches
        if n < 1 or global_batch % n:
            raise ValueError(f"batch size {global_batch} is not divisible by num_micro_batches {n}")
        micro = global_batch // n
        if micro % self.data_parallel:
            raise ValueError(
                f"micro-batch of {micro} rows (batch {global_batch} / {n} micro-batches) is not "
                f"divisible by the {self.data_parallel} data-parallel shards of mesh "
                f"{dict(self.mesh.shape)} (data x fsdp)")

    def abstract_state(self) -> tuple[Any, Any]:
        """(state, frozen) as ShapeDtypeStructs carrying their shardings (for restoring)."""
        state, frozen = jax.eval_shape(self._init_fn, jnp.uint32(0))
        add = lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s)
        return (jax.tree.map(add, state, self.state_shardings),
                jax.tree.map(add, frozen, self.frozen_shardings))

    # ----- init ------------------------------------------------------------------------------
    def _fresh(self, trainable, frozen):
        return {"step": jnp.zeros((), jnp.int32), "params": trainable,
                "opt_state": self.tx.init(trainable), "skipped": jnp.zeros((), jnp.int32),
                "bad_streak": jnp.zeros((), jnp.int32)}, frozen

    def _init_fn(self, seed):
        model = LlavaModel(self.config, rngs=nnx.Rngs(jax.random.key(seed)))
        return self._fresh(*self.partition.split(nnx.state(model, nnx.Param)))

    def init(self, seed: int, params: nnx.State | None = None):
        """Fresh (state, frozen), created directly in their shardings. `params` (a Param State,
        e.g. from `mir_jax.weights.load_weights`) replaces the random initialization."""
        out_sh = (self.state_shardings, self.frozen_shardings)
        if params is not None:
            return jax.jit(lambda p: self._fresh(*self.partition.split(p)), out_shardings=out_sh)(params)
        if self._init is None:
            lowered = jax.jit(self._init_fn, out_shardings=out_sh).lower(jnp.uint32(0))
            # XLA:CPU spends ~10 s optimizing the random-init program of even a tiny model;
            # it runs once, so skip the backend optimizations there.
            self._init = lowered.compile(
                compiler_options={"xla_backend_optimization_level": 0} if on_cpu(self.mesh) else None)
        return self._init(jnp.uint32(seed))

    def model(self, state, frozen) -> LlavaModel:
        """An nnx model view of (state, frozen) (inside or outside jit)."""
        return nnx.merge(self.graphdef, self.partition.combine(state["params"], frozen))

    # ----- train step --------------------------------------------------------------------------
    def _loss_and_grads(self, params, frozen, batch):
        z = self.step_config.z_loss

        def loss_fn(p):
            out = forward(nnx.merge(self.graphdef, self.partition.combine(p, frozen)), batch)
            sums = loss_sums(out.logits, batch["labels"], z)
            return sums["ce_sum"] + z * sums["z_sum"], sums

        (_, sums), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return sums, grads

    def _train_step_fn(self, state, frozen, batch):
        n = self.step_config.num_micro_batches
        params = state["params"]
        if n == 1:
            sums, grads = self._loss_and_grads(params, frozen, batch)
        else:
            # Micro-batch j takes rows j, j+n, j+2n, ...: each device's contiguous block of the
            # batch holds rows of every micro-batch, so no data moves between devices.
            def split(x):
                x = x.reshape(x.shape[0] // n, n, *x.shape[1:]).swapaxes(0, 1)
                spec = PartitionSpec(None, self.batch_axes, *([None] * (x.ndim - 2)))
                return jax.lax.with_sharding_constraint(x, NamedSharding(self.mesh, spec))

            micro = jax.tree.map(split, batch)

            def body(carry, mb):
                sums, grads = self._loss_and_grads(params, frozen, mb)
                return jax.tree.map(jnp.add, carry, (sums, grads)), None

            zero = jax.tree.map(jnp.zeros_like, jax.eval_shape(
                lambda: self._loss_and_grads(params, frozen, jax.tree.map(lambda x: x[0], micro))))
            (sums, grads), _ = jax.lax.scan(body, zero, micro)
        count = jnp.maximum(sums["tokens"], 1.0)
        grads = jax.tree.map(lambda g: g / count, grads)
        loss = sums["ce_sum"] / count
        z_term = sums["z_sum"] / count
        grad_norm = optax.global_norm(grads)
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & jnp.isfinite(z_term)
        updates, new_opt = self.tx.update(grads, state["opt_state"], params)
        new_params = optax.apply_updates(params, updates)
        keep = lambda new, old: jax.tree.map(lambda a, b: jnp.where(finite, a, b), new, old)
        new_state = {
            "step": state["step"] + 1,
            "params": keep(new_params, params),
            "opt_state": keep(new_opt, state["opt_state"]),
            "skipped": state["skipped"] + (~finite).astype(jnp.int32),
            "bad_streak": jnp.where(finite, 0, state["bad_streak"] + 1),
        }
        metrics = {"loss": loss, "z_loss": z_term, "grad_norm": grad_norm, "tokens": sums["tokens"],
                   "finite": finite, "param_norm": optax.global_norm(new_state["params"]),
                   "skipped": new_state["skipped"], "bad_streak": new_state["bad_streak"]}
        return new_state, metrics

    def jit_train_step(self, batch_ndims: Mapping[str, int]):
        """The jitted, sharded train step (state donated) for batches of these ranks; call,
        or `.lower(...)`, it under `use_mesh(self.mesh, self.rules)` (see `mir_jax.train.dry_run`)."""
        batch_sh = {k: self.batch_sharding(batch_ndims[k]) for k in LOSS_INPUTS}
        return jax.jit(self._train_step_fn,
                       in_shardings=(self.state_shardings, self.frozen_shardings, batch_sh),
                       out_shardings=(self.state_shardings, self.replicated),
                       donate_argnums=(0,))

    def jit_eval_step(self, batch_ndims: Mapping[str, int]):
        """The in-loop MIR evaluation (`mir_jax.evals.mir.mir_forward`: hidden states reduced to
        MIR rows, label NLL sums) jitted for this mesh, for the dry run's memory estimate."""
        batch_sh = {k: self.batch_sharding(batch_ndims[k]) for k in LOSS_INPUTS}
        return jax.jit(lambda s, f, b: mir_forward(self.model(s, f), b),
                       in_shardings=(self.state_shardings, self.frozen_shardings, batch_sh))

    def train_step(self, state, frozen, batch):
        """One optimizer step on a global batch (host dict of arrays or global jax.Arrays).
        Returns (new state, metrics dict of scalars). The old state is donated."""
        if self._train_step is None:
            self._train_step = self.jit_train_step({k: np.ndim(batch[k]) for k in LOSS_INPUTS})
        with use_mesh(self.mesh, self.rules):
            return self._train_step(state, frozen, {k: batch[k] for k in LOSS_INPUTS})

def global_batch(local: Mapping[str, np.ndarray], stepper: Stepper) -> dict[str, jax.Array]:
    """This process's rows -> global jax.Arrays sharded over (data, fsdp) (multi-host safe)."""
    return {k: jax.make_array_from_process_local_data(stepper.batch_sharding(np.ndim(local[k])),
                                                      np.asarray(local[k]))
            for k in LOSS_INPUTS}
