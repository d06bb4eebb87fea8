"""mir_jax.allocator: when the command-line tools re-execute with a caching allocator preloaded,
and that the re-executed process is the same command (PID, arguments) with the library loaded."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

from mir_jax import allocator

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD and /proc are Linux's")


def found(name="libtcmalloc_minimal.so.4"):
    return lambda: name


@pytest.mark.parametrize("environ, platform, want", [
    ({}, "linux", "libtcmalloc_minimal.so.4"),                                   # default: tcmalloc when found
    ({"MIR_JAX_MALLOC": "tcmalloc"}, "linux", "libtcmalloc_minimal.so.4"),
    ({}, "darwin", None),                                                        # no LD_PRELOAD there
    ({"MIR_JAX_MALLOC": "system"}, "linux", None),                               # switched off
    ({"MIR_JAX_MALLOC_PRELOADED": "libtcmalloc_minimal.so.4"}, "linux", None),   # already re-executed
    ({"LD_PRELOAD": "/opt/lib/libjemalloc.so.2"}, "linux", None),                # the user's own allocator
    ({"LD_PRELOAD": "libfoo.so"}, "linux", "libtcmalloc_minimal.so.4"),          # other preloads stay
])
def test_preload_plan(environ, platform, want):
    assert allocator.preload_plan(environ, platform, find=found()) == want


def test_preloaded_names_ours_or_the_users_allocator():
    assert allocator.preloaded({}) == "system malloc"
    assert allocator.preloaded({"LD_PRELOAD": "libfoo.so /opt/libjemalloc.so.2"}) == "/opt/libjemalloc.so.2"
    assert allocator.preloaded({"MIR_JAX_MALLOC_PRELOADED": "libtcmalloc_minimal.so.4",
                                "LD_PRELOAD": "libtcmalloc_minimal.so.4"}) == "libtcmalloc_minimal.so.4"


def test_preload_plan_without_tcmalloc_runs_as_is():
    assert allocator.preload_plan({}, "linux", find=lambda: None) is None


def test_preload_plan_takes_a_library_path_and_rejects_a_missing_one(tmp_path):
    lib = tmp_path / "libmy_malloc.so"
    lib.write_bytes(b"")
    assert allocator.preload_plan({"MIR_JAX_MALLOC": str(lib)}, "linux", find=found()) == str(lib)
    with pytest.raises(ValueError, match=r"MIR_JAX_MALLOC='/no/such/lib.so': no such file"):
        allocator.preload_plan({"MIR_JAX_MALLOC": "/no/such/lib.so"}, "linux", find=found())


SCRIPT = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, {repo!r})
    print("start", os.getpid(), flush=True)
    from mir_jax.allocator import preloaded, reexec_with_caching_allocator
    reexec_with_caching_allocator()
    maps = open("/proc/self/maps").read()
    print("end", os.getpid(), sys.argv[1:], preloaded(), os.environ.get("LD_PRELOAD", ""),
          {{name: name in maps for name in sys.argv[1:]}})
""")


def clean_env(extra):
    """This process's environment without any allocator choice or preload, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if k not in ("LD_PRELOAD", allocator.PRELOADED, allocator.CHOICE)}
    return {**env, **extra}


def run_script(tmp_path, env_extra, *args):
    script = tmp_path / "tool.py"
    script.write_text(SCRIPT.format(repo=REPO))
    return subprocess.run([sys.executable, "-u", str(script), *args], env=clean_env(env_extra),
                          capture_output=True, text=True, timeout=120)


def loaded_library(name: str) -> str:
    """The path of a shared library this (Linux) process has mapped, e.g. libm."""
    for line in open("/proc/self/maps"):
        path = line.split()[-1]
        if os.path.basename(path).startswith(name + ".so") or os.path.basename(path).startswith(name + "-"):
            return path
    pytest.skip(f"{name} is not mapped in this process")


@linux_only
def test_reexec_runs_the_same_command_again_with_the_library_preloaded(tmp_path):
    # Any library shows the mechanism (CI need not have tcmalloc): libm, which Python maps.
    libm = loaded_library("libm")
    r = run_script(tmp_path, {"MIR_JAX_MALLOC": libm}, "--flag=1", "x y")
    assert r.returncode == 0, r.stderr
    starts = [line for line in r.stdout.splitlines() if line.startswith("start")]
    end = [line for line in r.stdout.splitlines() if line.startswith("end")]
    assert len(starts) == 2 and starts[0] == starts[1], r.stdout  # executed twice, same PID
    assert len(end) == 1 and end[0].split()[1] == starts[0].split()[1], r.stdout
    assert "['--flag=1', 'x y']" in end[0] and f" {libm} {libm} " in end[0], end[0]


@linux_only
def test_system_allocator_and_a_bad_choice(tmp_path):
    r = run_script(tmp_path, {"MIR_JAX_MALLOC": "system"}, "libtcmalloc")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("start") == 1 and "system malloc" in r.stdout and "'libtcmalloc': False" in r.stdout
    r = run_script(tmp_path, {"MIR_JAX_MALLOC": "/no/such/lib.so"})
    assert r.returncode == 1
    assert r.stderr.strip() == ("error: MIR_JAX_MALLOC='/no/such/lib.so': no such file (give a shared "
                                "library's path, 'tcmalloc' or 'system')")


@linux_only
@pytest.mark.skipif(allocator.find_tcmalloc() is None, reason="no tcmalloc library installed")
def test_default_preloads_tcmalloc_when_installed(tmp_path):
    r = run_script(tmp_path, {}, "libtcmalloc")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("start") == 2 and "'libtcmalloc': True" in r.stdout, r.stdout
    assert r.stderr == ""


TOOLS = ["train.py", "evaluate.py", "study.py"] + sorted(
    f"benchmarks/{name}" for name in os.listdir(os.path.join(REPO, "benchmarks"))
    if name.endswith(".py") and name != "timing.py")


@linux_only
@pytest.mark.parametrize("tool", TOOLS)
def test_each_tool_decides_first_before_importing_jax(tool):
    # A bad choice stops the tool at the decision, so what it imported by then shows: not jax,
    # whose import would be repeated by the re-exec (about a second).
    r = subprocess.run([sys.executable, "-X", "importtime", os.path.join(REPO, tool), "--helpshort"], cwd=REPO,
                       env=clean_env({allocator.CHOICE: "/no/such/lib.so"}), capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 1, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("error: MIR_JAX_MALLOC='/no/such/lib.so'"), r.stderr[-500:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "mir_jax.allocator" in imported, sorted(imported)  # the tool's own decision stopped it
    assert "jax" not in imported and "torch" not in imported, sorted(m for m in imported if "jax" in m)
