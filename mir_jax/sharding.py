"""Device mesh and the one table that maps logical axis names to mesh axes.

Parameters and activations in `mir_jax.models` carry logical axis names only; to change how a
model is laid out over devices, edit `LOGICAL_AXIS_RULES` (or pass other rules), never the
model. Mesh axes (as in maxtext): data (replicated parameters), fsdp (sharded parameters and
optimizer state, ZeRO-3), tensor (inside matmuls).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("data", "fsdp", "tensor")

# Logical axis name -> mesh axis (or tuple of mesh axes, or None = replicated).
# Order matters only for names that appear twice (first match wins).
LOGICAL_AXIS_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    # Activations.
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("act_embed", None),
    ("act_heads", "tensor"),
    ("act_mlp", "tensor"),
    ("act_vocab", "tensor"),
    # Parameters of the language model.
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("layers", None),
    ("norm", None),
    # Parameters of the vision tower and connector.
    ("vision_embed", "fsdp"),
    ("vision_mlp", "tensor"),
    ("vision_heads", "tensor"),
    ("patch", None),
    ("channels", None),
    ("conv_height", None),
    ("conv_width", None),
    ("queries", None),
    ("positions", None),
)


def make_mesh(shape: Sequence[int] = (-1, 1, 1), devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds a (data, fsdp, tensor) mesh; one entry of `shape` may be -1 (= the rest).

    Raises a ValueError naming the numbers when the shape does not divide the devices,
    before anything is compiled.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = list(shape)
    if len(shape) != len(MESH_AXES):
        raise ValueError(f"mesh shape {tuple(shape)} must have {len(MESH_AXES)} entries {MESH_AXES}")
    if shape.count(-1) > 1:
        raise ValueError(f"mesh shape {tuple(shape)}: at most one entry may be -1")
    known = math.prod(s for s in shape if s != -1)
    if known <= 0 or len(devices) % known:
        raise ValueError(
            f"mesh shape {tuple(shape)} does not divide the {len(devices)} available devices"
        )
    shape = [len(devices) // known if s == -1 else s for s in shape]
    if math.prod(shape) != len(devices):
        raise ValueError(
            f"mesh shape {tuple(shape)} uses {math.prod(shape)} devices but {len(devices)} are available"
        )
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES)


def logical_to_mesh_spec(logical: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> PartitionSpec:
    """Maps a tuple of logical axis names to a PartitionSpec over mesh axes."""
    table = dict(rules)
    used: set[str] = set()
    out = []
    for name in logical:
        mesh_axes = table.get(name) if name is not None else None
        if mesh_axes is None:
            out.append(None)
            continue
        mesh_axes = (mesh_axes,) if isinstance(mesh_axes, str) else tuple(mesh_axes)
        # A mesh axis may shard only one dimension of an array.
        mesh_axes = tuple(a for a in mesh_axes if a not in used)
        used.update(mesh_axes)
        out.append(mesh_axes if len(mesh_axes) > 1 else (mesh_axes[0] if mesh_axes else None))
    return PartitionSpec(*out)


def logical_sharding(mesh: Mesh, logical: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    return NamedSharding(mesh, logical_to_mesh_spec(logical, rules))


def batch_sharding(mesh: Mesh, ndim: int, rules=LOGICAL_AXIS_RULES) -> NamedSharding:
    """Sharding of an [B, ...] batch array: its leading axis on the logical "batch" axes."""
    return logical_sharding(mesh, ("batch",) + (None,) * (ndim - 1), rules)


def batch_axes(rules=LOGICAL_AXIS_RULES) -> tuple[str, ...]:
    """The mesh axes of the logical "batch" axis (from the rules table)."""
    axes = logical_to_mesh_spec(("batch",), rules)[0]
    return (axes,) if isinstance(axes, str) else tuple(axes or ())


def data_parallel_size(mesh: Mesh | None, rules=LOGICAL_AXIS_RULES) -> int:
    """How many ways the logical "batch" axis splits on `mesh` (1 without one): the number a
    batch size must divide by."""
    return 1 if mesh is None else math.prod(mesh.shape[a] for a in batch_axes(rules))


EVAL_ROWS = 16  # the eval batch of batch_size=0 (loss, MIR) on up to 16 data-parallel shards


def eval_batch_rows(requested: int, data_parallel: int, process_count: int = 1) -> int:
    """The eval batch in rows: `requested`, or for 0 ("auto") the smallest multiple of the
    data-parallel shards and hosts that is at least EVAL_ROWS, so one recipe evaluates on 1 or
    256 chips (it only chunks a fixed sample set, so no result changes). ValueError when
    `requested` does not split.
    """
    step = math.lcm(max(int(data_parallel), 1), max(int(process_count), 1))
    if int(requested) == 0:
        return step * -(-EVAL_ROWS // step)
    if int(requested) % step:
        raise ValueError(f"eval batch size {requested} is not divisible by the {data_parallel} "
                         f"data-parallel shards and {process_count} hosts "
                         "(batch_size=0 picks one that is)")
    return int(requested)


def batch_from_full(full, mesh: Mesh, keys: Sequence[str], rules=LOGICAL_AXIS_RULES) -> dict:
    """A whole batch present on every process (an evaluation set every host reads in full)
    -> global jax.Arrays sharded over the batch axes: each device takes its own rows, so the
    arrays equal a single process's whatever the number of hosts."""
    out = {}
    for k in keys:
        if full.get(k) is None:
            out[k] = None
            continue
        x = np.asarray(full[k])
        out[k] = jax.make_array_from_callback(x.shape, batch_sharding(mesh, x.ndim, rules),
                                              lambda index, x=x: x[index])
    return out


def active_mesh():
    """The mesh set by `use_mesh` (or `jax.set_mesh`) around the current code, or None."""
    mesh = jax.sharding.get_abstract_mesh()
    return None if mesh is None or mesh.empty else mesh


def constrain(x: jax.Array, logical: Sequence[str | None], rules=LOGICAL_AXIS_RULES) -> jax.Array:
    """Sharding constraint in logical names; a no-op when no mesh is active."""
    if active_mesh() is None:
        return x
    return jax.lax.with_sharding_constraint(x, logical_to_mesh_spec(logical, rules))


@contextlib.contextmanager
def use_mesh(mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """Activates `mesh` and the logical-axis rules for model creation and jitted steps."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(rules):
        yield mesh


def state_shardings(state, mesh: Mesh, rules=LOGICAL_AXIS_RULES):
    """NamedSharding tree for an `nnx.State` whose Variables carry logical `out_sharding`."""
    with nnx.logical_axis_rules(rules):
        specs = nnx.get_partition_spec(state)
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, PartitionSpec))
