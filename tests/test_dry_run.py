"""train.py --dry_run / mir_jax.train.dry_run: every full-size recipe compiles its sharded train step
and MIR eval step on fake CPU devices, and the per-device bytes it reports for parameters and
optimizer state are the closed form from the parameter count and the sharding rules.

Fake devices are per process, so everything runs in subprocesses (16 devices). The recipes run
at their own batch, sequence length, mesh, dtype and remat, but with 2 ViT and 2 decoder layers:
the full 7B train step takes ~40 s to compile on this loaded 2-core machine (BENCHMARKS.md has
the full-depth figures), and depth changes only the stacked "layers" axis, never the sharding
rule being checked.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = 16
SHALLOW = ["--config.model.text.num_layers=2", "--config.model.vision.num_layers=2"]
# stage0.py has no full-size form (stage 0 at full size is a pre-trained CLIP and LLM).
CONFIGS = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))
                 if os.path.basename(p) not in ("__init__.py", "common.py", "stage0.py"))

CHILD = r"""
import importlib, json, math, sys
from mir_jax.train import dry_run as dr
dr.configure_fake_devices({n})
import jax
from mir_jax.models import LlavaConfig
from mir_jax.sharding import logical_to_mesh_spec, make_mesh
from mir_jax.train.step import Stepper
out = {{}}
for name in {names!r}:
    c = importlib.import_module("configs." + name).get_config()
    c.model.text.num_layers = 2
    c.model.vision.num_layers = 2
    # The MIR eval step (same model, eval batch) once: its compile is as slow as the train step's.
    r = dr.dry_run(c, hbm_gb=1e6, eval_step=name == "llava15_sft")
    # The closed form's inputs: per leaf, its element count over the product of the mesh axes
    # its logical names map to (the rules table), read off the parameters' logical names, not
    # off any sharding object; [per-device elements, replicated elements] per part.
    mesh = make_mesh(c.mesh)
    st = Stepper(LlavaConfig.from_dict(c.model.to_dict()), c.trainable, c.optimizer, 10, mesh)
    counts = {{"trainable": [0, 0], "frozen": [0, 0]}}
    totals = {{"trainable": 0, "frozen": 0}}
    for leaf in st.partition.leaves:
        n = math.prod(leaf.shape)
        axes = [a for a in jax.tree.leaves(tuple(logical_to_mesh_spec(leaf.names))) if a]
        ways = math.prod(mesh.shape[a] for a in axes)
        rows = n // leaf.shape[0] * (leaf.rows[1] - leaf.rows[0]) if isinstance(leaf.rows, tuple) else n
        parts = {{"trainable": rows if leaf.rows is not None else 0}}
        parts["frozen"] = n - parts["trainable"] if leaf.rows != "all" else 0
        for part, k in parts.items():
            counts[part][0] += k // ways
            counts[part][1] += k if ways == 1 else 0
            totals[part] += k
    r["counts"], r["totals"] = counts, totals
    r["expected_mesh"] = dict(mesh.shape)
    r["param_itemsize"] = {{str(l.dtype) for l in jax.tree.leaves(st.abstract_state()[0]["params"])}}.pop()
    out[name] = r
print("JSON " + json.dumps(out))
"""


def _env():
    from mir_jax.train.dry_run import fake_device_env

    env = fake_device_env(DEVICES)
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def reports():
    code = CHILD.format(root=ROOT, n=DEVICES, names=CONFIGS)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                       env=_env(), timeout=600)
    line = next((x for x in p.stdout.splitlines() if x.startswith("JSON ")), None)
    assert line is not None, p.stderr[-3000:]
    return json.loads(line[5:])


def test_every_full_size_config_is_dry_run():
    assert {"mm1_mix", "llava15_pretrain", "llava15_sft", "moca"} <= set(CONFIGS)


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_per_device_bytes_are_the_closed_form(reports, name):
    r = reports[name]
    n = r["devices"]
    assert n == DEVICES and r["mesh"] == r["expected_mesh"]
    # llava15_sft (and moca, its MoCa form): 2-way tensor parallel, so that its batch of 128
    # splits on 256 chips too.
    tensor = 2 if name in ("llava15_sft", "moca") else 1
    assert r["mesh"] == {"data": 1, "fsdp": DEVICES // tensor, "tensor": tensor}
    assert r["param_itemsize"] == "float32"  # parameters are kept in float32 (compute in bf16)
    (tr_dev, tr_rep), (fr_dev, _) = r["counts"]["trainable"], r["counts"]["frozen"]
    p = r["params"]
    assert p["trainable"] == r["totals"]["trainable"] and p["frozen"] == r["totals"]["frozen"]
    assert p["total"] == p["trainable"] + p["frozen"]
    # Only norms, biases and the like are replicated: the per-device bytes are ~4 P / N.
    assert tr_rep <= 0.01 * p["trainable"]
    d = r["per_device"]
    # float32: 4 bytes x (elements / the ways each parameter is split), summed.
    assert d["trainable_params"] == 4 * tr_dev
    assert d["frozen_params"] == 4 * fr_dev
    # AdamW: mu and nu for each trainable parameter, same sharding, plus a few replicated scalars.
    assert 2 * d["trainable_params"] <= d["opt_state"] <= 2 * d["trainable_params"] + 64
    b = r["batch"]
    rows = b["batch_size"] // (r["mesh"]["data"] * r["mesh"]["fsdp"])  # batch over data x fsdp
    # four int32 [B, S] arrays, float32 images [B, M, H, W, 3], bool image mask [B, M]
    image = 336  # the 7B recipes' CLIP ViT-L/14-336
    assert d["batch"] == rows * (4 * 4 * b["seq_len"] + b["max_images"] * (4 * 3 * image**2 + 1))
    # XLA's own view of the train step's inputs agrees with the shardings' (state, frozen, batch).
    m = r["train"]["memory"]
    inputs = d["trainable_params"] + d["opt_state"] + d["frozen_params"] + d["batch"]
    assert abs(m["argument"] - inputs) <= 2**20, (m, inputs)
    assert m["alias"] >= d["trainable_params"] + d["opt_state"]  # the state is donated
    assert m["temp"] > 0 and r["train"]["flops"] > 0
    assert not r["problems"] and r["fits"]
    if name == "llava15_sft":
        e = r["eval_mir"]
        assert e["memory"]["temp"] > 0 and e["flops"] > 0 and (e["batch_size"], e["seq_len"]) == (16, 2048)
        assert r["peak_bytes"] == max(m["total"], e["memory"]["total"])
    else:
        assert r["peak_bytes"] == m["total"]


@pytest.mark.slow
def test_readme_command_and_impossible_budget():
    """The README's command (depth reduced, see the module docstring) exits 3 with the verdict
    line when the budget cannot hold it; nothing is written to the working directory."""
    before = set(os.listdir(ROOT))
    cmd = [sys.executable, "train.py", "--config=configs/llava15_pretrain.py", "--dry_run",
           f"--num_devices={DEVICES}", "--hbm_gb=0.01", *SHALLOW]
    env = dict(os.environ, PYTHONPATH=ROOT)
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
    assert p.returncode == 3, p.stdout[-2000:] + p.stderr[-2000:]
    verdict = p.stdout.strip().splitlines()[-1]
    assert verdict.startswith("verdict: DOES NOT FIT: peak ") and "--hbm_gb=0.01" in verdict
    assert "parameters: " in p.stdout and "temporaries" in p.stdout and "P(None, 'fsdp'" in p.stdout
    assert set(os.listdir(ROOT)) == before


@pytest.mark.slow
def test_bad_input_is_one_line():
    env = dict(os.environ, PYTHONPATH=ROOT)
    for extra, want in ((["--num_devices=7"], "mesh shape (1, -1, 2) does not divide the 7 available devices"),
                        (["--num_devices=16", "--config.batch_size=12"],
                         "not divisible by the 8 data-parallel shards"),
                        (["--topology=v5e:16x16"], "needs libtpu"),
                        (["--num_devices=16", "--hbm_gb=0"], "--hbm_gb=0 must be > 0")):
        p = subprocess.run([sys.executable, "train.py", "--config=configs/llava15_sft.py", "--dry_run", *extra],
                           capture_output=True, text=True, cwd=ROOT, env=env, timeout=120)
        assert p.returncode == 1, (extra, p.stderr[-1000:])
        assert p.stderr.strip().count("\n") == 0 and want in p.stderr, (extra, p.stderr[-1000:])
