"""Provenance: `versions()` reports what is installed (checked against each library's own
`__version__`, a route independent of the package metadata the code reads), and what is installed
lies inside setup.cfg's tested bounds, so an upgrade past a bound fails here first."""

from __future__ import annotations

import configparser
import importlib
import os

import pytest

from mir_jax import provenance

packaging = pytest.importorskip("packaging", reason="the bounds check needs `packaging` (in [test])")
from packaging.requirements import Requirement  # noqa: E402
from packaging.version import Version  # noqa: E402

SETUP_CFG = os.path.join(os.path.dirname(__file__), "..", "setup.cfg")

# Distribution name -> the module whose __version__ states it.
MODULES = {"jax": "jax", "jaxlib": "jaxlib", "flax": "flax", "optax": "optax",
           "orbax-checkpoint": "orbax.checkpoint", "grain": "grain",
           "transformers": "transformers", "tokenizers": "tokenizers", "numpy": "numpy"}


def _install_requires() -> dict[str, Requirement]:
    parser = configparser.ConfigParser()
    parser.read(SETUP_CFG)
    lines = [ln.strip() for ln in parser["options"]["install_requires"].splitlines()]
    reqs = [Requirement(ln) for ln in lines if ln and not ln.startswith("#")]
    return {r.name.lower(): r for r in reqs}


def test_versions_match_each_librarys_own_version_string():
    v = provenance.versions()
    assert set(MODULES) <= set(v)
    for dist, module in MODULES.items():
        assert v[dist] == importlib.import_module(module).__version__, dist
    import platform
    import sys

    assert v["python"] == ".".join(map(str, sys.version_info[:3])) == platform.python_version()
    assert v["cpu"] and v["cpu"] != "unknown"


def test_summary_is_one_line_naming_every_version():
    line = provenance.summary()
    assert "\n" not in line
    v = provenance.versions()
    for dist in MODULES:
        assert f"{dist} {v[dist]}" in line
    assert f"cpu {v['cpu']} x{os.cpu_count()}" in line


def test_cpu_model_is_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                       "model name\t: AMD EPYC 7B13 64-Core Processor\nflags\t\t: fpu avx2\n\n"
                       "processor\t: 1\nmodel name\t: AMD EPYC 7B13 64-Core Processor\n")
    assert provenance.cpu_model(str(cpuinfo)) == "AMD EPYC 7B13 64-Core Processor"
    # No such file (not Linux): the platform's name, never an exception.
    assert provenance.cpu_model(str(tmp_path / "missing"))


def test_every_reported_library_has_tested_bounds_and_is_installed_within_them():
    reqs = _install_requires()
    for dist in provenance.PACKAGES:
        req = reqs.get(dist)
        assert req is not None, f"setup.cfg does not list {dist}"
        ops = {spec.operator for spec in req.specifier}
        assert ">=" in ops and "<" in ops, f"{dist}: {req} needs a lower and an upper bound"
        installed = provenance.versions()[dist]
        assert req.specifier.contains(installed, prereleases=True), (
            f"{dist} {installed} is outside setup.cfg's tested range {req.specifier}: run the "
            "suite on it, then move the bounds")


def test_bounds_check_rejects_an_upgrade_past_the_upper_bound():
    # The check above can fail: the next jax minor and a numpy 3 lie outside the ranges.
    reqs = _install_requires()
    jax_upper = next(Version(s.version) for s in reqs["jax"].specifier if s.operator == "<")
    assert not reqs["jax"].specifier.contains(str(jax_upper))
    assert not reqs["numpy"].specifier.contains("3.0.0")
    assert reqs["numpy"].specifier.contains(provenance.versions()["numpy"])
    for dist in ("safetensors", "ml-collections", "pycocoevalcap"):
        assert len(reqs[dist].specifier) == 2, f"{dist}: {reqs[dist]}"
