"""The one place that decides whether a computation takes the CPU-only paths.

XLA:CPU runs a program's ops nearly one after another on a few cores with small caches, so
there a loop over cache-sized tiles or an unrolled layer stack beats the batched, scanned form
that suits accelerators (BENCHMARKS.md, "Components" and "Attention"); every such branch asks
`on_cpu`.
"""

from __future__ import annotations

import jax


def on_cpu(mesh: jax.sharding.Mesh | None = None) -> bool:
    """Whether the devices of `mesh` (default: JAX's default backend) are CPUs."""
    if mesh is not None:
        return mesh.devices.flat[0].platform == "cpu"
    return jax.default_backend() == "cpu"
