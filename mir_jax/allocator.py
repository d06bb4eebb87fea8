"""A caching memory allocator (tcmalloc) for the command-line tools on Linux CPUs.

Why: glibc's malloc serves every request above 32 MiB with a fresh `mmap` and unmaps it on
`free`. A training step's temporaries on XLA:CPU, and PyTorch's large activations, are such
requests, so every step touches its working memory as new pages, which the kernel maps and
zeroes one 4 KiB page fault at a time. A caching allocator keeps freed memory for the next
step instead. On the benchmark train step: about 720k page faults (2.8 GiB of fresh pages) and
1.3 s of system time a step with glibc, none with tcmalloc
(figures in BENCHMARKS.md, "Memory allocator").

The allocator must be in place before the process allocates anything, so it cannot be
switched on from Python: `reexec_with_caching_allocator()` (called first thing by `train.py`,
`evaluate.py`, `study.py` and the benchmarks) starts the same command again, once, with
tcmalloc in `LD_PRELOAD` (the PID, arguments and environment stay the same). It does nothing
when no tcmalloc library is installed (on Debian and Ubuntu the package is
libtcmalloc-minimal4), off Linux, when `LD_PRELOAD` already holds an allocator, or when switched off.

`MIR_JAX_MALLOC`: unset or `tcmalloc` (use it when found), `system` (never), or the path of a
shared library to preload instead.
"""

from __future__ import annotations

import ctypes.util
import glob
import os
import re
import sys

CHOICE = "MIR_JAX_MALLOC"
PRELOADED = "MIR_JAX_MALLOC_PRELOADED"  # set in the re-executed process: never exec twice
_ALLOCATOR_NAMES = ("tcmalloc", "jemalloc", "mimalloc")
# tcmalloc reports every allocation above 1 GiB on stderr; a training step makes such
# allocations by design.
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


def _preloaded_allocator(environ) -> str | None:
    """The first LD_PRELOAD entry (space- or colon-separated, as ld.so reads them) that names a
    known allocator, or None."""
    entries = re.split(r"[\s:]+", environ.get("LD_PRELOAD", ""))
    return next((p for p in entries if any(name in p for name in _ALLOCATOR_NAMES)), None)


def preload_plan(environ, platform: str = sys.platform, find=find_tcmalloc) -> str | None:
    """The library to re-execute with in LD_PRELOAD, or None to run as is. Raises ValueError
    (one line) when MIR_JAX_MALLOC names a file that does not exist."""
    choice = environ.get(CHOICE, "tcmalloc").strip()
    if not platform.startswith("linux") or environ.get(PRELOADED) or choice.lower() in ("system", "off", "0"):
        return None
    if _preloaded_allocator(environ):
        return None  # the user preloaded an allocator of their own
    if choice.lower() == "tcmalloc" or not choice:
        return find()
    if not os.path.isfile(choice):
        raise ValueError(f"{CHOICE}={choice!r}: no such file (give a shared library's path, 'tcmalloc' "
                         "or 'system')")
    return choice


def preloaded(environ=os.environ) -> str:
    """What this process runs with: the preloaded allocator's name or path (ours or the user's),
    or "system malloc"."""
    return environ.get(PRELOADED) or _preloaded_allocator(environ) or "system malloc"


def reexec_with_caching_allocator() -> None:
    """Starts this command again with the caching allocator preloaded, when `preload_plan`
    gives one; returns (doing nothing) otherwise. Exits with a one-line message for a bad
    MIR_JAX_MALLOC."""
    try:
        library = preload_plan(os.environ)
    except ValueError as e:
        sys.exit(f"error: {e}")
    if library is None or not sys.executable:
        return
    env = dict(os.environ, **{PRELOADED: library}, **{k: v for k, v in _QUIET.items() if k not in os.environ})
    env["LD_PRELOAD"] = " ".join(filter(None, [library, os.environ.get("LD_PRELOAD", "")]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], env)
