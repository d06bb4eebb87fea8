"""Multi-process start-up: `initialize()` before anything touches a JAX device.

Coordinator address, process count and id come, each separately, from the arguments
(--coordinator_address, --num_processes, --process_id), else JAX_COORDINATOR_ADDRESS /
JAX_NUM_PROCESSES / JAX_PROCESS_ID, else JAX's cluster detection (SLURM, Open MPI, Cloud TPU,
Kubernetes); with none of them the run is single-process. A manual launch gives all three on
every machine, the coordinator being process 0's `host:port`:

    python train.py ... --coordinator_address=10.0.0.1:1234 --num_processes=2 --process_id=0

On CPU processes talk through gloo, so the same launch also runs on one machine.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ENV_COORDINATOR = "JAX_COORDINATOR_ADDRESS"
ENV_NUM_PROCESSES = "JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "JAX_PROCESS_ID"

# Managed clusters that describe several processes (JAX's cluster detection reads them).
_CLUSTER_COORDINATOR_ENV = ("COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS")
_CLUSTER_SIZE_ENV = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE")


class DistributedSetupError(ValueError):
    """The multi-process settings are incomplete or inconsistent (one line, says what to set)."""


def _int_setting(value, flag: str, env: str) -> int | None:
    if value is None or value == "":
        value, where = os.environ.get(env), f"${env}"
        if value is None or value == "":
            return None
    else:
        where = f"--{flag}"
    try:
        return int(value)
    except (TypeError, ValueError):
        raise DistributedSetupError(f"{where}={value!r} is not an integer") from None


def _cluster_describes_several_processes() -> bool:
    """True where a managed cluster's environment describes more than one process."""
    if any(os.environ.get(k) for k in _CLUSTER_COORDINATOR_ENV):
        return True
    for k in _CLUSTER_SIZE_ENV:
        try:
            if int(os.environ.get(k) or 1) > 1:
                return True
        except ValueError:
            pass
    return "," in os.environ.get("TPU_WORKER_HOSTNAMES", "")


def resolve(coordinator_address: str | None = None, num_processes: int | str | None = None,
            process_id: int | str | None = None) -> dict | None:
    """The keyword arguments for `jax.distributed.initialize`, or None for a single process.

    Values left None are for JAX's cluster detection to fill in. Raises DistributedSetupError
    for values that cannot work (process id out of range, an address without a port, ...).
    """
    address = coordinator_address or os.environ.get(ENV_COORDINATOR) or None
    n = _int_setting(num_processes, "num_processes", ENV_NUM_PROCESSES)
    pid = _int_setting(process_id, "process_id", ENV_PROCESS_ID)
    if n is not None and n < 1:
        raise DistributedSetupError(f"num_processes={n}: must be at least 1")
    if n == 1 and pid in (None, 0):
        return None  # explicitly one process
    if pid is not None and (pid < 0 or (n is not None and pid >= n)):
        raise DistributedSetupError(f"process_id={pid} is outside 0..{(n or 0) - 1} "
                                    f"(num_processes={n})")
    if address is not None and (":" not in address or not address.rsplit(":", 1)[1].isdigit()):
        raise DistributedSetupError(f"coordinator_address={address!r}: expected HOST:PORT "
                                    "(process 0's machine and a free port)")
    if address is None and n is None and pid is None and not _cluster_describes_several_processes():
        return None
    return {"coordinator_address": address, "num_processes": n, "process_id": pid}


def _use_gloo_on_cpu() -> None:
    """CPU collectives across processes need an implementation; gloo ships with jaxlib.
    (Harmless on GPU/TPU machines: it only concerns the CPU backend.)"""
    import jax

    if getattr(jax.config, "jax_cpu_collectives_implementation", None) in (None, "none", ""):
        jax.config.update("jax_cpu_collectives_implementation", "gloo")


def initialize(coordinator_address: str | None = None, num_processes: int | str | None = None,
               process_id: int | str | None = None) -> bool:
    """Joins this process to a multi-process JAX run if one is described (see the module
    docstring). Returns True when `jax.distributed.initialize` was called. Call it before
    any JAX computation; a second call does nothing."""
    import jax

    kwargs = resolve(coordinator_address, num_processes, process_id)
    if kwargs is None:
        return False
    if jax.distributed.is_initialized():
        return True
    _use_gloo_on_cpu()
    try:
        jax.distributed.initialize(**kwargs)
    except ValueError as e:
        missing = [f"--{k} (or ${env})" for k, env in (
            ("coordinator_address", ENV_COORDINATOR), ("num_processes", ENV_NUM_PROCESSES),
            ("process_id", ENV_PROCESS_ID)) if kwargs[k] is None]
        if missing:
            raise DistributedSetupError(
                f"multi-process launch without {' and '.join(missing)}, and no cluster environment "
                "(SLURM, Open MPI, Cloud TPU) supplies it: give it to every process (the "
                "coordinator is process 0's HOST:PORT)") from None
        raise DistributedSetupError(f"jax.distributed.initialize({kwargs}): {e}") from None
    log.info("process %d of %d (coordinator %s); %d local of %d devices",
             jax.process_index(), jax.process_count(), kwargs["coordinator_address"] or "auto",
             jax.local_device_count(), jax.device_count())
    return True


def host_batch_slice(sharding, global_batch: int, *, process_index: int | None = None,
                     process_of=None) -> tuple[int, int, int]:
    """Which rows of a global batch this process's devices hold: (shard_index, shard_count,
    local_batch), for `jax.make_array_from_process_local_data`.

    Usually (process_index, process_count, global_batch / process_count); processes that share
    rows (e.g. a tensor axis spanning hosts) get the same shard. `process_index` /
    `process_of(device)` stand in for JAX's in tests.
    """
    import jax

    pid = jax.process_index() if process_index is None else process_index
    process_of = process_of or (lambda d: d.process_index)
    rows = set()
    for device, index in sharding.devices_indices_map((int(global_batch),)).items():
        if process_of(device) == pid:
            rows.update(range(*index[0].indices(int(global_batch))))
    if not rows:
        raise ValueError(f"process {pid} holds no device of the batch sharding")
    lo, n = min(rows), len(rows)
    if rows != set(range(lo, lo + n)) or lo % n or global_batch % n:
        raise ValueError(f"process {pid} holds batch rows {sorted(rows)} of {global_batch}: not one "
                         "aligned block; order the mesh's devices so each host's are adjacent")
    return lo // n, int(global_batch) // n, n
