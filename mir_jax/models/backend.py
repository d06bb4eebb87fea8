"""The one place that decides whether a computation takes a backend-specific path.

XLA:CPU runs a program's ops nearly one after another on a few cores with small caches, so
there a loop over cache-sized tiles or an unrolled layer stack beats the batched, scanned form
that suits accelerators (BENCHMARKS.md, "Components" and "Attention"); every such branch asks
`on_cpu`. TPUs get their own MIR method (`mir_jax.mir.methods.resolve_method`: their
eigensolvers are slow, their matmuls fast), which asks `on_tpu`.
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
