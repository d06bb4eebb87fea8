"""Benchmark scripts that BENCHMARKS.md and their docstrings show, run at small sizes as a user
runs them (subprocesses): each still runs end to end against its reference, and its own check
of ours against that reference holds (HF PyTorch: the same greedy tokens, logits and first
training loss within float32 rounding; the published float64 MIR code). Their timings at these
sizes mean nothing and are not looked at. The scripts with no reference to agree with (attention,
components, data_pipeline, dry_run, legacy_modes, mir_eval, mir_routes) run at small sizes
too, so that every command BENCHMARKS.md shows still works; where a script prints an accuracy
against float64 or the published code, that is checked."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests import train_fixtures as fx

pytestmark = pytest.mark.slow  # each runs a benchmark script in a fresh process

ENV = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as a user's machine
NEEDS_TORCH = "this benchmark's reference is PyTorch; pip install torch (a CPU build: see README)"


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, os.path.join(fx.ROOT, "benchmarks", script), *args], cwd=fx.ROOT,
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    # Every benchmark names its install first, so a figure can be traced to its versions.
    assert out.stdout.startswith("versions: jax "), out.stdout[:500]
    return out.stdout


def test_generation_benchmark_runs_and_matches_hf_tokens():
    pytest.importorskip("torch", reason=NEEDS_TORCH)
    # The script asserts that our 2x2 greedy tokens equal HF generate's before it times anything.
    text = _run("generation.py", "--batch", "2", "--new_tokens", "2", "--repeats", "1")
    assert "tokens: every side == HF on all 2x2" in text
    assert re.search(r"\| ours \(`generate`\) \| [\d.]+ \|", text), text


def test_model_forward_benchmark_runs_and_matches_hf_logits():
    pytest.importorskip("torch", reason=NEEDS_TORCH)
    text = _run("model_forward.py", "--batch", "1", "--length", "320", "--repeats", "1")
    diff = float(re.search(r"max \|logit diff\| ([\d.e+-]+)", text).group(1))
    assert diff < 1e-4, text


def test_train_step_benchmark_runs_and_matches_hf_first_loss():
    pytest.importorskip("torch", reason=NEEDS_TORCH)
    text = _run("train_step.py", "--batch", "1", "--length", "320", "--steps", "1")
    ours, hf = map(float, re.search(r"first-step loss: ours ([\d.]+), HF ([\d.]+)", text).groups())
    assert abs(ours - hf) < 1e-4, text


def test_mir_kernel_benchmark_runs_and_matches_the_published_float64_code():
    pytest.importorskip("torch", reason=NEEDS_TORCH)
    text = _run("mir_kernel.py", "--quick", "--repeats", "1")
    diffs = [float(x) for x in re.findall(r"max per-layer relative difference vs published: ([\d.e+-]+)", text)]
    assert diffs and max(diffs) < 1e-4, text


def test_attention_benchmark_runs_causal_and_bidirectional():
    for extra in ((), ("--bidirectional", "--block", "128", "128")):
        text = _run("attention.py", "--lengths", "256", "--repeats", "1", *extra)
        assert re.search(r"fwd\+bwd +dense +[\d.]+ ms +blockwise +[\d.]+ ms", text), text
    text = _run("attention.py", "--lengths", "256", "--memory_only")
    assert "S=256: scores [B,H,S,S] f32 = 2 MiB" in text, text


def test_attention_commits_benchmark_loads_the_old_module_beside_ours():
    have = subprocess.run(["git", "-C", fx.ROOT, "cat-file", "-e", "56c68bd^{commit}"], capture_output=True)
    if have.returncode:
        pytest.skip("this checkout lacks commit 56c68bd (a shallow clone)")
    text = _run("attention_commits.py", "--quick", "--repeats", "1")
    rows = re.findall(r"56c68bd [\d.]+, ours auto [\d.]+ \([\d.]+x\), ours dense [\d.]+ \([\d.]+x\)$", text, re.M)
    assert len(rows) == 2, text


def test_components_benchmark_runs_a_table_of_ratios():
    pytest.importorskip("torch", reason=NEEDS_TORCH)
    text = _run("components.py", "--batch", "1", "--length", "128", "--repeats", "1", "--only", "dense,attention")
    rows = re.findall(r"^\| (dense|attention) .* \| [\d.]+x \|$", text, re.M)
    assert len(rows) >= 4, text


def test_data_pipeline_benchmark_runs():
    text = _run("data_pipeline.py", "--n", "8", "--batch", "4", "--batches", "2")
    assert re.search(r"ours, 2 workers, 1 thread each +[\d.]+ examples/s", text), text


def test_dry_run_benchmark_prints_a_verdict_row():
    mesh_of = r"^\| mm1_mix \| \((\d+), (\d+), (\d+)\) \| none \|.*\| (?:fits|does not fit) \|$"
    text = _run("dry_run.py", "--num_devices=8", "--configs=mm1_mix", "--remat=none")
    assert re.findall(mesh_of, text, re.M) == [("1", "8", "1")], text  # the recipe's own mesh
    text = _run("dry_run.py", "--num_devices=8", "--configs=mm1_mix", "--remat=none", "--mesh", "mm1_mix=8,1,1")
    assert re.findall(mesh_of, text, re.M) == [("8", "1", "1")], text  # --mesh replaces it


def test_legacy_modes_benchmark_gives_its_verdict():
    pytest.importorskip("torch", reason=NEEDS_TORCH)
    text = _run("legacy_modes.py", "--dim", "32", "--tokens", "200")
    assert re.search(r"published_fast: layers [\d, ]+ are in the rounding-noise regime", text), text


def test_mir_eval_benchmark_agrees_with_the_published_code():
    pytest.importorskip("torch", reason=NEEDS_TORCH)
    text = _run("mir_eval.py", "--num_samples", "4", "--big", "8")
    diff = float(re.search(r"max per-layer relative difference: ([\d.e+-]+)", text).group(1))
    assert diff < 1e-3, text


def test_mir_routes_benchmark_singular_route_is_float32_accurate():
    text = _run("mir_routes.py")
    rows = re.findall(r"^(?:benchmark features|well-aligned).*?([\d.]+e[+-]\d+)$", text, re.M)
    assert len(rows) >= 4 and max(map(float, rows)) < 1e-3, text  # the last column: ours
