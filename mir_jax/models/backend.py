"""The one place that decides whether a computation takes a backend-specific path: `on_cpu`
(tile loops and unrolled stacks beat the batched, scanned forms there: BENCHMARKS.md,
"Components") and `on_tpu` (its own MIR method, `mir_jax.mir.methods.resolve_method`).
"""

from __future__ import annotations

import jax


def on_cpu(mesh: jax.sharding.Mesh | None = None) -> bool:
    """Whether the devices of `mesh` (default: JAX's default backend) are CPUs."""
    if mesh is not None:
        return mesh.devices.flat[0].platform == "cpu"
    return jax.default_backend() == "cpu"


def on_tpu() -> bool:
    """Whether JAX's default backend is a TPU."""
    return jax.default_backend() == "tpu"
