"""JAX's persistent compilation cache, on by default for the command-line tools, so a second run
of the same command loads its compiled programs from disk. It lives in
``$XDG_CACHE_HOME/mir_jax/jax`` (default ``~/.cache/mir_jax/jax``); ``JAX_COMPILATION_CACHE_DIR``
picks another folder, ``MIR_JAX_COMPILATION_CACHE=0`` turns it off. Programs compiling in under
``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` (default 1 s) are not stored.
"""

from __future__ import annotations

import os


def default_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "mir_jax", "jax")


def enable() -> str | None:
    """Turns the cache on (unless switched off); returns its folder, or None when off."""
    if os.environ.get("MIR_JAX_COMPILATION_CACHE", "1").lower() in ("0", "off", "false", "no"):
        return None
    import jax

    folder = jax.config.jax_compilation_cache_dir or default_dir()  # the env var sets the config
    jax.config.update("jax_compilation_cache_dir", folder)
    return folder
