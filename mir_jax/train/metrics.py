"""Run metrics: `metrics.jsonl` ({"step", "split", ...scalars} a line), TensorBoard events
(tensorboardX), a PNG of the loss and MIR curves, and throughput/MFU estimates. Only process 0
writes; on resume, lines at or beyond the resumed step are dropped.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping

import numpy as np

# Peak dense bf16 FLOP/s per accelerator, for MFU. CPUs: see `_cpu_peak_flops`.
PEAK_FLOPS = {
    "tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12,
    "tpu v6 lite": 918e12, "tpu v6e": 918e12,
    "h100": 989e12, "h200": 989e12, "a100": 312e12, "l4": 121e12, "v100": 125e12,
}


def peak_flops_per_device(device=None) -> float:
    """Best-known peak FLOP/s of one device (see PEAK_FLOPS); CPU: from the core count."""
    import jax

    device = device or jax.devices()[0]
    kind = getattr(device, "device_kind", "").lower()
    for name, flops in PEAK_FLOPS.items():
        if name in kind:
            return flops
    if device.platform == "cpu":
        # Host devices share the machine's cores (fake multi-device CPU runs included).
        return _cpu_peak_flops() / max(jax.local_device_count(), 1)
    return float("nan")


def _read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _cpu_peak_flops(cpuinfo: str | None = None, max_freq_khz: str | None = None, cores: int | None = None) -> float:
    """float32 peak FLOP/s: cores x 2 FMA units x SIMD lanes (16 with AVX-512, else 8) x 2 x clock.

    The clock is cpufreq's maximum, else the highest "cpu MHz" (in a VM the nominal clock, so
    MFU can read high), else 2.5 GHz; `config.peak_flops` overrides it. The arguments stand in
    for /proc/cpuinfo's text, cpufreq's value (kHz) and the core count."""
    cpuinfo = _read("/proc/cpuinfo") if cpuinfo is None else cpuinfo
    if max_freq_khz is None:
        max_freq_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    lanes = 16 if cpuinfo and " avx512f" in cpuinfo else 8
    return (cores or os.cpu_count() or 1) * 2 * lanes * 2 * _cpu_ghz(cpuinfo or "", max_freq_khz) * 1e9


def _cpu_ghz(cpuinfo: str, max_freq_khz: str | None) -> float:
    """cpufreq's maximum, else the highest "cpu MHz" line, else 2.5 (also for unreadable values)."""
    try:
        if max_freq_khz and max_freq_khz.strip():
            return float(max_freq_khz) / 1e6
        mhz = [float(line.split(":")[1]) for line in cpuinfo.splitlines() if line.startswith("cpu MHz")]
        return max(mhz) / 1000 if mhz else 2.5
    except ValueError:
        return 2.5


def model_flops_per_token(model_config, seq_len: int, images_per_token: float) -> float:
    """Training FLOPs per LLM token: the LLM's (`models.flops_per_token`) plus the vision tower's
    and connector's share (`models.image_flops` x images per token)."""
    from mir_jax.models import flops_per_token, image_flops

    return flops_per_token(model_config, seq_len) + image_flops(model_config) * images_per_token


class MetricWriter:
    """JSONL + TensorBoard writer (no-ops where inactive)."""

    def __init__(self, workdir: str, *, active: bool = True, resume_step: int | None = None):
        self.active = active
        self.path = os.path.join(workdir, "metrics.jsonl")
        self._tb = None
        if not active:
            return
        os.makedirs(workdir, exist_ok=True)
        if resume_step is not None and os.path.exists(self.path):
            self._truncate(resume_step)
        elif resume_step is None and os.path.exists(self.path):
            os.replace(self.path, self.path + ".old")  # a fresh run: keep, but start anew
        from tensorboardX import SummaryWriter

        self._tb = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)
        self._file = open(self.path, "a")

    def _truncate(self, step: int) -> None:
        kept = [ln for ln in read_jsonl(self.path) if ln.get("step", 0) <= step]
        with open(self.path, "w") as f:
            f.writelines(json.dumps(r) + "\n" for r in kept)

    def write(self, step: int, split: str, scalars: Mapping[str, float]) -> None:
        if not self.active:
            return
        row = {"step": int(step), "split": split}
        row.update({k: _plain(v) for k, v in scalars.items()})
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        for k, v in row.items():
            if k not in ("step", "split") and isinstance(v, (int, float)) and math.isfinite(v):
                self._tb.add_scalar(f"{split}/{k}", v, step)

    def flush(self) -> None:
        if self.active:
            self._file.flush()
            self._tb.flush()

    def close(self) -> None:
        if self.active:
            self._file.close()
            self._tb.close()


def _plain(v):
    v = np.asarray(v)
    if v.ndim == 0:
        return v.item()
    return v.tolist()


def read_jsonl(path: str) -> list[dict]:
    """All complete rows of a metrics.jsonl (a torn last line from a crash is ignored)."""
    rows = []
    with open(path) as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


# The one score per downstream evaluator that the training plot draws (defined with scores.png's).
from mir_jax.evals.score_plot import HEADLINE_SCORES  # noqa: E402


def plot_metrics(jsonl_path: str, png_path: str) -> str:
    """Plots train/eval loss, MIR and the downstream headline scores (split "downstream" rows)
    against the step into a PNG; returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = read_jsonl(jsonl_path)
    train = [r for r in rows if r.get("split") == "train" and "loss" in r]
    evals = [r for r in rows if r.get("split") == "eval"]
    downstream = [r for r in rows if r.get("split") == "downstream"]
    headline = sorted({k for r in downstream for k in r if k.split("/")[-1] in HEADLINE_SCORES})
    panels = 3 if headline else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.5 * panels, 4))
    ax_loss, ax_mir = axes[0], axes[1]
    if train:
        ax_loss.plot([r["step"] for r in train], [r["loss"] for r in train], label="train", lw=1)
    ev = [r for r in evals if "loss" in r]
    if ev:
        ax_loss.plot([r["step"] for r in ev], [r["loss"] for r in ev], "o-", label="held-out")
    ax_loss.set(xlabel="step", ylabel="next-token loss", title="Loss")
    ax_loss.legend()
    ax_loss.grid(alpha=0.3)
    mir = [r for r in evals if r.get("mir") is not None]
    if mir:
        ax_mir.plot([r["step"] for r in mir], [r["mir"] for r in mir], "o-", color="C2")
    ax_mir.set(xlabel="step", ylabel="MIR = log10(sum_l FD_l)", title="Modality Integration Rate (lower = better aligned)")
    ax_mir.grid(alpha=0.3)
    if headline:
        ax = axes[2]
        for key in headline:
            pts = [(r["step"], r[key]) for r in downstream if r.get(key) is not None]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=key)
        ax.set(xlabel="step", ylabel="score", title="Downstream (embedded benchmark or given data)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
