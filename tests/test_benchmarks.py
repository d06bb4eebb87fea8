"""Benchmark scripts that BENCHMARKS.md and their docstrings show, run at small sizes as a user
runs them (subprocesses): each still runs end to end against its reference, and its own check
of ours against that reference holds (HF PyTorch: the same greedy tokens, logits and first
training loss within float32 rounding; the published float64 MIR code). Their timings at these
sizes mean nothing and are not looked at. (The other scripts are not run here: see
BENCHMARKS.md for the commands.)"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from tests import train_fixtures as fx

ENV = {**os.environ, "XLA_FLAGS": ""}  # one CPU device, as a user's machine


def _run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, os.path.join(fx.ROOT, "benchmarks", script), *args], cwd=fx.ROOT,
                         env=ENV, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-4000:]
    return out.stdout


def test_generation_benchmark_runs_and_matches_hf_tokens():
    # The script asserts that our 2x2 greedy tokens equal HF generate's before it times anything.
    text = _run("generation.py", "--batch", "2", "--new_tokens", "2", "--repeats", "1")
    assert "tokens: every side == HF on all 2x2" in text
    assert re.search(r"\| ours \(`generate`\) \| [\d.]+ \|", text), text


def test_model_forward_benchmark_runs_and_matches_hf_logits():
    text = _run("model_forward.py", "--batch", "1", "--length", "320", "--repeats", "1")
    diff = float(re.search(r"max \|logit diff\| ([\d.e+-]+)", text).group(1))
    assert diff < 1e-4, text


def test_train_step_benchmark_runs_and_matches_hf_first_loss():
    text = _run("train_step.py", "--batch", "1", "--length", "320", "--steps", "1")
    ours, hf = map(float, re.search(r"first-step loss: ours ([\d.]+), HF ([\d.]+)", text).groups())
    assert abs(ours - hf) < 1e-4, text


def test_mir_kernel_benchmark_runs_and_matches_the_published_float64_code():
    text = _run("mir_kernel.py", "--quick", "--repeats", "1")
    diffs = [float(x) for x in re.findall(r"max per-layer relative difference vs published: ([\d.e+-]+)", text)]
    assert diffs and max(diffs) < 1e-4, text
