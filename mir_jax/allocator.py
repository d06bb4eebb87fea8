"""A caching memory allocator (tcmalloc) for CPU runs on Linux, as an explicit opt-in.

glibc's malloc maps and zeroes fresh pages for every large buffer on every training step;
tcmalloc reuses them (BENCHMARKS.md, "Memory allocator"). It must be preloaded, so it is
chosen when the command starts; the line below prints nothing where tcmalloc is not installed
(Debian/Ubuntu: libtcmalloc-minimal4), so it runs everywhere:

    env $(python -m mir_jax.allocator) python train.py --config=configs/mm1_mix.py:runlocal ...
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import re

_ALLOCATOR_NAMES = ("tcmalloc", "jemalloc", "mimalloc")
# tcmalloc reports every allocation above 1 GiB on stderr; a training step makes them by design.
_QUIET = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 50)}


def find_tcmalloc() -> str | None:
    """The tcmalloc shared library to preload (a name the dynamic loader resolves, or a path),
    or None when none is installed."""
    for name in ("tcmalloc_minimal", "tcmalloc"):
        found = ctypes.util.find_library(name)
        if found:
            return found
    for pattern in ("/usr/lib*/libtcmalloc_minimal.so.*", "/usr/lib/*-linux-gnu/libtcmalloc_minimal.so.*",
                    "/usr/local/lib*/libtcmalloc_minimal.so*"):
        hits = sorted(p for p in glob.glob(pattern) if "debug" not in p)
        if hits:
            return hits[0]
    return None


def preload_environment(find=find_tcmalloc) -> dict[str, str]:
    """{"LD_PRELOAD": library, ...} that starts a command with tcmalloc, or {} without one."""
    library = find()
    return {"LD_PRELOAD": library, **_QUIET} if library else {}


def preloaded(environ=os.environ) -> str:
    """The allocator this process was started with (the first LD_PRELOAD entry, space- or
    colon-separated as ld.so reads them, that names one), or "system malloc"."""
    entries = re.split(r"[\s:]+", environ.get("LD_PRELOAD", ""))
    return next((p for p in entries if any(name in p for name in _ALLOCATOR_NAMES)), "system malloc")


if __name__ == "__main__":
    print(" ".join(f"{k}={v}" for k, v in preload_environment().items()))
