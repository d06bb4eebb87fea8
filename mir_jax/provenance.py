"""What produced a result: `versions()` (the libraries that decide numbers and speed, and the
CPU model) goes into every output JSON, and `summary()` is the one line the tools and
benchmarks print at start.
"""

from __future__ import annotations

import functools
import os
import platform
from importlib import metadata

# Distribution names (as pip knows them), in the order they are printed.
PACKAGES = ("jax", "jaxlib", "flax", "optax", "orbax-checkpoint", "grain", "transformers",
            "tokenizers", "numpy")


def versions() -> dict[str, str]:
    """{distribution name: installed version} for `PACKAGES` ("not installed" where absent), plus
    "python" and "cpu" (the CPU model from /proc/cpuinfo, or the platform's processor name)."""
    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    out["python"] = platform.python_version()
    out["cpu"] = cpu_model()
    return out


def summary() -> str:
    """`versions()` as one line: "jax 0.10.2, jaxlib 0.10.2, ..., python 3.11.7; cpu AMD EPYC x2"."""
    v = versions()
    libs = ", ".join(f"{k} {v[k]}" for k in (*PACKAGES, "python"))
    return f"versions: {libs}; cpu {v['cpu']} x{os.cpu_count()}"


@functools.cache
def cpu_model(cpuinfo_path: str = "/proc/cpuinfo") -> str:
    """The first "model name" of /proc/cpuinfo (Linux); elsewhere the platform's processor name or
    machine type."""
    try:
        with open(cpuinfo_path) as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() == "model name" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"
