"""Dry-run memory table: the 7B recipes' train steps compiled for N fake CPU devices with each
remat policy (`mir_jax.train.dry_run`, one fresh process per row: fake devices are per process).

    python benchmarks/dry_run.py --num_devices=256 [--configs=mm1_mix,llava15_pretrain,llava15_sft]
        [--remat=none,dots_no_batch,full] [--mesh llava15_sft=1,128,2]

Prints one markdown row per (config, remat): per-device trainable params, optimizer state,
frozen params, batch, XLA temporaries, total, FLOPs, compile time, and the verdict vs 16 GB.
Only the train step is compiled (the MIR eval step's figures come from `train.py --dry_run`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

CHILD = r"""
import json, sys
sys.path.insert(0, {root!r})
from mir_jax.train import dry_run as dr
dr.configure_fake_devices({n})
import importlib
c = importlib.import_module("configs." + {name!r}).get_config()
c.model.remat = {remat!r}
if {mesh!r}:
    c.mesh = tuple({mesh!r})
r = dr.dry_run(c, hbm_gb={hbm}, eval_step=False)
print("JSON " + json.dumps(r))
"""


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--num_devices", type=int, default=256)
    ap.add_argument("--configs", default="mm1_mix,llava15_pretrain,llava15_sft")
    ap.add_argument("--remat", default="none,dots_no_batch,full")
    ap.add_argument("--hbm_gb", type=float, default=16.0)
    ap.add_argument("--mesh", action="append", default=[], help="CONFIG=d,f,t: that config's mesh instead of its own")
    a = ap.parse_args()
    meshes = {k: [int(x) for x in v.split(",")] for k, v in (m.split("=", 1) for m in a.mesh)}
    gb = 2**30
    print("| config | mesh | remat | params | opt state | frozen | batch | temporaries | total | "
          "TFLOP/device | compile s | vs 16 GB |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|")
    for name in a.configs.split(","):
        for remat in a.remat.split(","):
            code = CHILD.format(root=ROOT, n=a.num_devices, name=name, remat=remat,
                                mesh=meshes.get(name), hbm=a.hbm_gb)
            p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
            line = next((x for x in p.stdout.splitlines() if x.startswith("JSON ")), None)
            if line is None:
                err = (p.stderr.strip().splitlines() or ["?"])[-1]
                print(f"| {name} | {meshes.get(name) or 'config'} | {remat} | error: {err} |", flush=True)
                continue
            r = json.loads(line[5:])
            d, m, t = r["per_device"], r["train"]["memory"], r["train"]
            print(f"| {name} | {tuple(r['mesh'].values())} | {remat} | {d['trainable_params'] / gb:.2f} | "
                  f"{d['opt_state'] / gb:.2f} | {d['frozen_params'] / gb:.2f} | {d['batch'] / gb:.3f} | "
                  f"{m['temp'] / gb:.1f} | {m['total'] / gb:.1f} | {t['flops'] / 1e12:.1f} | "
                  f"{t['compile_s']:.0f} | {'fits' if r['fits'] else 'does not fit'} |", flush=True)


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
