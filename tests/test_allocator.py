"""mir_jax.allocator: the opt-in tcmalloc line and the report of what a process runs with."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from mir_jax import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_preload_environment_names_the_library_or_nothing():
    env = allocator.preload_environment(find=lambda: "libtcmalloc_minimal.so.4")
    assert env["LD_PRELOAD"] == "libtcmalloc_minimal.so.4"
    assert int(env["TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD"]) == 1 << 50
    assert allocator.preload_environment(find=lambda: None) == {}


def test_preloaded_names_the_allocator_in_ld_preload():
    assert allocator.preloaded({}) == "system malloc"
    assert allocator.preloaded({"LD_PRELOAD": "libfoo.so /opt/libjemalloc.so.2"}) == "/opt/libjemalloc.so.2"
    assert allocator.preloaded({"LD_PRELOAD": "libfoo.so:libtcmalloc_minimal.so.4"}) == "libtcmalloc_minimal.so.4"
    assert allocator.preloaded({"LD_PRELOAD": "libfoo.so"}) == "system malloc"


def _documented_line(command: str) -> subprocess.CompletedProcess:
    """`env $(python -m mir_jax.allocator) COMMAND`, as the README and the module show it."""
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run(["bash", "-c", f"env $({sys.executable} -m mir_jax.allocator) {command}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)


def test_the_documented_line_runs_with_or_without_tcmalloc():
    probe = (f"{sys.executable} -c 'import os; from mir_jax.allocator import preloaded; "
             "print(preloaded()); print(open(\"/proc/self/maps\").read())'")
    r = _documented_line(probe)
    assert r.returncode == 0, r.stderr
    reported, maps = r.stdout.split("\n", 1)
    if allocator.find_tcmalloc() is None:
        assert reported == "system malloc" and "tcmalloc" not in maps
    else:
        assert "tcmalloc" in reported and "libtcmalloc" in maps  # the library is really mapped


@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="no tcmalloc library installed")
def test_printed_environment_is_what_the_module_computes():
    r = subprocess.run([sys.executable, "-m", "mir_jax.allocator"], cwd=ROOT, capture_output=True,
                       text=True, timeout=60, check=True)
    printed = dict(item.split("=", 1) for item in r.stdout.split())
    assert printed == allocator.preload_environment()
