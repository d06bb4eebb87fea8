"""The README's Training commands through train.py itself (subprocesses, as a user runs them):
kill -TERM (exit 143, the step), resume, a finished run's rerun changing nothing, a damaged
newest checkpoint, bad-sample counts, the full-size recipes' one-message config check, and
`--config.init_from=DIR --config.data.sources='[...]'` with a real JSON list."""

from __future__ import annotations

import glob
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from mir_jax.train.metrics import read_jsonl
from tests import train_fixtures as fx

# A user's machine: one CPU device (the test process fakes 8; subprocesses do not need them).
# The runs share the suite's persistent compilation cache (conftest): a resumed run compiles
# what the first one did, and the cache turns its ~25 s of compiling into ~2 s.
ENV = {**os.environ, "XLA_FLAGS": ""}

pytestmark = pytest.mark.slow  # every test starts train.py in a fresh process


# Keeps the runlocal recipe to seconds: 4 rows a step, held-out loss only (no MIR, no samples,
# no downstream evaluators), every `every` steps and at the end.
def _fast(every: int = 0, evals: dict | None = None) -> list[str]:
    evals = {"loss": {"every": every, "num_samples": 4, "batch_size": 4}} if evals is None else evals
    return ["--config.batch_size=4", "--config.log_every=1", f"--config.evals={json.dumps(evals)}"]


FAST = _fast()


def _cmd(config: str, workdir, *overrides) -> list[str]:
    return [sys.executable, os.path.join(fx.ROOT, "train.py"), f"--config={config}", f"--workdir={workdir}",
            *overrides]


def _run(config, workdir, *overrides, timeout=300) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(config, workdir, *overrides), cwd=fx.ROOT, env=ENV, capture_output=True,
                          text=True, timeout=timeout)


def _snapshot(workdir) -> dict[str, bytes]:
    """Every file of the workdir's logs (metrics, TensorBoard, config, plot) with its bytes."""
    names = ["metrics.jsonl", "config.json", "loss_mir.png"] + sorted(
        os.path.relpath(f, workdir) for f in glob.glob(os.path.join(workdir, "tensorboard", "*")))
    return {n: open(os.path.join(workdir, n), "rb").read() for n in names}


def _steps(workdir, split) -> list[int]:
    return [r["step"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl")) if r["split"] == split]


def test_sigterm_then_a_damaged_checkpoint_then_a_rerun_of_the_finished_run(tmp_path):
    """The README's main command, shortened: kill -TERM mid-run; damage the checkpoint the stop
    wrote and rerun (resumes from the one before, finishes); rerun again (changes nothing)."""
    workdir = tmp_path / "run"
    ckpts, metrics = workdir / "checkpoints", workdir / "metrics.jsonl"
    cmd = ["--config.total_steps=60", "--config.checkpoint.every=4", *_fast(every=20)]
    # 1. kill -TERM once training is under way: checkpoint, exit 143, say where it stopped.
    out, err = open(tmp_path / "out1", "w+"), open(tmp_path / "err1", "w+")
    proc = subprocess.Popen(_cmd("configs/mm1_mix.py:runlocal", workdir, *cmd), cwd=fx.ROOT, env=ENV,
                            stdout=out, stderr=err, text=True)
    deadline = time.time() + 240
    while not (metrics.exists() and any(r["split"] == "train" and r["step"] >= 6 for r in read_jsonl(metrics))):
        assert proc.poll() is None and time.time() < deadline, open(tmp_path / "err1").read()[-3000:]
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 143
    out.seek(0), err.seek(0)
    stdout, stderr = out.read(), err.read()
    (stopped,) = [ln for ln in stdout.splitlines() if ln.startswith("train.py: stopped")]
    step = int(stopped.split(" at step ")[1].split(";")[0])
    assert stopped == (f"train.py: stopped by SIGTERM at step {step}; checkpoint saved, rerun the same "
                       "command to resume")
    assert 6 <= step < 60 and "done:" not in stdout and "Traceback" not in stderr
    assert _steps(workdir, "train")[-1] == step
    saved = sorted(int(s) for s in os.listdir(ckpts))
    assert saved[-1] == step and len(saved) == 2  # the stop's checkpoint and the one before (keep 2)

    # 2. A truncated array file in that newest checkpoint. The same command: one warning line,
    #    resume from the step before, nothing deleted, no traceback or event-loop noise; it
    #    finishes, and every evaluation logs the bad-sample counts.
    f = max(glob.glob(str(ckpts / str(step) / "state" / "ocdbt.process_0" / "d" / "*")), key=os.path.getsize)
    os.truncate(f, os.path.getsize(f) // 2)
    done = _run("configs/mm1_mix.py:runlocal", workdir, *cmd)
    assert done.returncode == 0, done.stderr[-3000:]
    (warning,) = [ln for ln in done.stderr.splitlines() if "does not restore" in ln]
    assert f"checkpoint step {step} in {ckpts} does not restore (" in warning
    assert warning.endswith(f"); trying step {saved[0]}")
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr
    assert os.path.isdir(ckpts / f"{step}.damaged")
    assert "done: step 60, train loss" in done.stdout
    assert _steps(workdir, "train") == list(range(1, 61))  # no step twice, none missing
    evals, data = _steps(workdir, "eval"), _steps(workdir, "data")
    assert 60 in evals and data == evals
    (last,) = [r for r in read_jsonl(metrics) if r["split"] == "data" and r["step"] == 60]
    assert set(last["bad_samples"]) == {"synthetic_caption", "synthetic_interleaved", "synthetic_text"}
    assert all(s["seen"] > 0 and s["bad"] == 0 for s in last["bad_samples"].values())
    assert "step 60: bad samples: synthetic_caption 0 of " in done.stdout

    # 3. Rerunning the finished run changes nothing and says so.
    before = _snapshot(workdir)
    again = _run("configs/mm1_mix.py:runlocal", workdir, *cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"train.py: {workdir} already holds the finished run (step 60); nothing to do" in again.stdout
    assert _snapshot(workdir) == before


@pytest.mark.parametrize("config, overrides, message", [
    # The production command of the design, nothing set.
    ("configs/mm1_mix.py", [], "train.py: config has 3 problems: tokenizer is not set: --config.tokenizer=DIR"),
    ("configs/mm1_mix.py:runlocal", ["--config.tokenizer=/nonexistent"],
     "train.py: config has 1 problem: tokenizer directory '/nonexistent' does not exist"),
    ("configs/mm1_mix.py:runlocal", ["--config.total_steps=-5"],
     "train.py: config has 1 problem: total_steps=-5 must be a positive integer"),
    ("configs/moca.py:runlocal", ["--config.model.connector.name=mlp2x_relu", "--config.optimizer.lr=0"],
     "train.py: config has 2 problems: optimizer.lr=0.0 must be > 0; model: unknown connector 'mlp2x_relu'"),
    # A recipe that refuses its argument (stage 0 exists only as the miniature).
    ("configs/stage0.py", [], "train.py: --config=configs/stage0.py: configs/stage0.py is runlocal-only"),
])
def test_config_problems_are_one_line_before_anything_heavy(tmp_path, config, overrides, message):
    proc = _run(config, tmp_path / "w", *overrides, timeout=120)
    assert proc.returncode == 1
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert lines == [lines[0]] and lines[0].startswith(message), proc.stderr[-3000:]
    assert not (tmp_path / "w").exists()  # nothing written


def _llava_pretrain_files(tmp_path, n=24, caption=lambda i: f"a square of colour {i}.") -> list[dict]:
    """n LCS-558K-style records (an image and its caption) with 32x32 PNGs: one colour each."""
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    records = []
    for i in range(n):
        colour = rng.integers(0, 256, 3).astype(np.uint8)
        Image.fromarray(np.broadcast_to(colour, (32, 32, 3)).copy()).save(folder / f"{i}.png")
        records.append({"id": str(i), "image": f"{i}.png", "conversations": [
            {"from": "human", "value": "<image>\n"}, {"from": "gpt", "value": caption(i)}]})
    (tmp_path / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(records))
    return [{"type": "llava", "path": str(tmp_path / "blip_laion_cc_sbu_558k.json"), "image_folder": str(folder),
             "template": "plain"}]


def test_samples_too_long_for_seq_len_name_the_length_and_the_key(tmp_path):
    """Your own LLaVA JSON on a runlocal recipe: plain-template rows of bos + 16 image tokens +
    a 300-byte caption + eos = 318 tokens, against seq_len 128."""
    sources = _llava_pretrain_files(tmp_path, n=60, caption=lambda i: "x" * 300)
    proc = _run("configs/llava15_pretrain.py:runlocal", tmp_path / "w",
                f"--config.data.sources={json.dumps(sources)}", *FAST, timeout=180)
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("train.py: data source 'blip_laion_cc_sbu_558k': ") and "Traceback" not in proc.stderr
    # (The held-out set, read first, is where the source fails: all of its samples.)
    assert "samples failed (more than the allowed 10.0%); commonest reason: too_long (" in last
    assert last.endswith("; the longest of them needs 318 tokens but seq_len is 128: raise it (train.py: "
                         "--config.seq_len=318) or set the source's overlong='truncate'"), last


def _stage1_dir(tmp_path, config) -> str:
    """An HF LLaVA directory with the recipe's model shapes and random weights (as build_stage1 +
    save_pretrained would write from a CLIP and an LLM)."""
    from flax import nnx

    from mir_jax.models import LlavaConfig, LlavaModel
    from mir_jax.weights import hf

    path = str(tmp_path / "stage1")
    hf.save_pretrained(LlavaModel(LlavaConfig.from_dict(config.model.to_dict()), rngs=nnx.Rngs(7)), path)
    return path


def test_readme_pretrain_command_with_init_from_and_a_json_list_of_sources(tmp_path):
    """`--config.init_from=/ckpt/stage1 --config.data.sources='[...]'` from the README: on the
    full-size recipe both are accepted (only the tokenizer is left to set); on the runlocal
    shapes the run starts from init_from, reads the JSON list's source and trains."""
    from configs import llava15_pretrain
    from mir_jax.evals.loading import load_model
    from mir_jax.weights import load_weights

    sources = _llava_pretrain_files(tmp_path)
    init = _stage1_dir(tmp_path, llava15_pretrain.get_config("runlocal"))
    readme = [f"--config.init_from={init}", f"--config.data.sources={json.dumps(sources)}"]
    full = _run("configs/llava15_pretrain.py", tmp_path / "pt", *readme, timeout=120)
    assert full.returncode == 1
    assert full.stderr.strip().startswith("train.py: config has 1 problem: tokenizer is not set"), full.stderr

    workdir = tmp_path / "pt_local"
    proc = _run("configs/llava15_pretrain.py:runlocal", workdir, *readme, "--config.total_steps=2",
                *_fast(evals={}))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "done: step 2" in proc.stdout
    (data,) = [r for r in read_jsonl(workdir / "metrics.jsonl") if r["split"] == "data"]
    assert list(data["bad_samples"]) == ["blip_laion_cc_sbu_558k"]  # the JSON list's one source
    assert data["bad_samples"]["blip_laion_cc_sbu_558k"]["seen"] >= 2 * 4
    assert data["bad_samples"]["blip_laion_cc_sbu_558k"]["bad"] == 0
    # Stage 1 trains only the connector: the vision tower and LLM are init_from's, bit for bit.
    from flax import nnx

    trained = load_model(str(workdir)).model
    _, start = load_weights(init)[:2]
    got, want = nnx.state(trained, nnx.Param).flat_state(), nnx.state(start, nnx.Param).flat_state()
    frozen = [k for k in dict(want) if k[0] in ("vision_tower", "language_model")]
    assert frozen
    for k in frozen:
        np.testing.assert_array_equal(np.asarray(dict(got)[k].value), np.asarray(dict(want)[k].value))
