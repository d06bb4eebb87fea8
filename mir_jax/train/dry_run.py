"""Pod readiness without a pod: compile a recipe's real sharded steps ahead of time and report
whether they fit a chip.

    python train.py --config=configs/llava15_sft.py --dry_run --num_devices=16 --hbm_gb=16

Everything is abstract (nothing is read or written); the train and MIR eval steps compile for
the config's mesh on N fake CPU devices or a TPU topology (`--topology`, needs libtpu). Reports
per-device bytes, XLA's memory analysis, FLOPs, the largest parameters' PartitionSpecs,
compile times and a verdict against the HBM budget (1 GB = 2**30 bytes).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import time
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

GB = 2**30
EXIT_DOES_NOT_FIT = 3


class DryRunError(ValueError):
    """Input the dry run cannot work with (one line)."""


def configure_fake_devices(num_devices: int) -> None:
    """Makes this process's CPU backend have `num_devices` devices; before any JAX computation."""
    if num_devices < 1:
        raise DryRunError(f"--num_devices={num_devices} must be >= 1")
    os.environ["JAX_PLATFORMS"] = "cpu"
    try:  # JAX refuses both settings once its backends are up
        jax.config.update("jax_platforms", "cpu")
        jax.config.update("jax_num_cpu_devices", int(num_devices))
    except RuntimeError as e:
        raise DryRunError("JAX's backend is already initialized: fake devices must be set first") from e


def topology_devices(topology: str) -> list:
    """The devices of a TPU topology description (no TPU needed, libtpu is)."""
    if importlib.util.find_spec("libtpu") is None:
        raise DryRunError(f"--topology={topology} needs libtpu (pip install 'jax[tpu]'); without it, "
                          "use --num_devices=N (fake CPU devices)")
    from jax.experimental import topologies

    try:
        return list(topologies.get_topology_desc(topology_name=topology, platform="tpu").devices)
    except Exception as e:  # noqa: BLE001 -- whatever libtpu says about the name
        raise DryRunError(f"--topology={topology}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from e


def _nbytes_per_device(tree) -> int:
    """Bytes one device holds of a tree of sharded ShapeDtypeStructs (the largest shard)."""
    total = 0
    for a in jax.tree.leaves(tree):
        shape = a.sharding.shard_shape(a.shape) if getattr(a, "sharding", None) is not None else a.shape
        total += math.prod(shape) * jnp.dtype(a.dtype).itemsize
    return total


def abstract_batch(stepper, batch_size: int, seq_len: int, max_images: int, image_size: int) -> dict:
    """The step's batch as sharded ShapeDtypeStructs (the layout of mir_jax.data.pipeline)."""
    shapes = {"input_ids": ((batch_size, seq_len), jnp.int32), "labels": ((batch_size, seq_len), jnp.int32),
              "segment_ids": ((batch_size, seq_len), jnp.int32), "positions": ((batch_size, seq_len), jnp.int32),
              "pixel_values": ((batch_size, max_images, image_size, image_size, 3), jnp.float32),
              "image_mask": ((batch_size, max_images), jnp.bool_)}
    return {k: jax.ShapeDtypeStruct(s, d, sharding=stepper.batch_sharding(len(s))) for k, (s, d) in shapes.items()}


def train_max_images(config, num_image_tokens: int) -> int:
    """Images a training row holds, as the data pipeline decides it (no file is read)."""
    from mir_jax.data import mixture

    cfg = mixture.resolve_config(config.data)
    specs = [s for s in cfg["sources"] if float(s.get("weight", 1.0)) > 0]
    return mixture._max_images(cfg, specs, int(config.seq_len), num_image_tokens)


def _memory(compiled) -> dict[str, int]:
    m = compiled.memory_analysis()
    if isinstance(m, (list, tuple)):
        m = m[0]
    out = {k: int(getattr(m, f"{k}_size_in_bytes", 0) or 0)
           for k in ("argument", "output", "alias", "temp", "generated_code")}
    out["total"] = out["argument"] + out["output"] - out["alias"] + out["temp"]
    return out


def _flops(compiled) -> float:
    cost = compiled.cost_analysis()
    if isinstance(cost, (list, tuple)):
        cost = cost[0] if cost else {}
    return float((cost or {}).get("flops", 0.0))


def _compile(jitted, args, mesh, rules) -> tuple[dict, float, float, float]:
    from mir_jax.sharding import use_mesh

    t0 = time.perf_counter()
    with use_mesh(mesh, rules):
        lowered = jitted.lower(*args)
    t1 = time.perf_counter()
    # LLVM optimizations dominate XLA:CPU compile time and change neither memory nor cost analysis.
    cpu = mesh.devices.flat[0].platform == "cpu"
    compiled = lowered.compile(compiler_options={"xla_backend_optimization_level": 0} if cpu else None)
    t2 = time.perf_counter()
    return _memory(compiled), _flops(compiled), t1 - t0, t2 - t1


def _param_table(stepper, per_part: int = 3) -> list[dict]:
    """The largest `per_part` parameters of each top-level part, with spec and per-device bytes."""
    from mir_jax.sharding import logical_to_mesh_spec

    rows: dict[str, list] = {}
    for leaf in stepper.partition.leaves:
        rows.setdefault(leaf.key.split(".")[0], []).append(leaf)
    out = []
    for leaves in rows.values():
        for leaf in sorted(leaves, key=lambda lf: -math.prod(lf.shape))[:per_part]:
            spec = logical_to_mesh_spec(leaf.names, stepper.rules)
            sharding = jax.sharding.NamedSharding(stepper.mesh, spec)
            out.append({"key": leaf.key, "shape": list(leaf.shape), "spec": str(spec),
                        "shard": list(sharding.shard_shape(leaf.shape)),
                        "trainable": {None: "frozen", "all": "yes"}.get(leaf.rows, f"rows {leaf.rows}")})
    return out


def dry_run(config, *, hbm_gb: float = 16.0, devices=None, eval_step: bool = True) -> dict[str, Any]:
    """Compiles the config's train (and MIR eval) step on `devices` (default: jax.devices())
    and returns the report (a JSON-able dict; `format_report` prints it)."""
    from mir_jax.models import LlavaConfig
    from mir_jax.sharding import eval_batch_rows, make_mesh
    from mir_jax.train.config_check import ConfigError, _model_problems, _value_problems
    from mir_jax.train.step import StepConfig, Stepper

    problems = _value_problems(config) + _model_problems(config)[0]
    if problems:
        raise ConfigError("; ".join(problems))
    devices = list(jax.devices() if devices is None else devices)
    mc = LlavaConfig.from_dict(config.model)
    try:
        mesh = make_mesh(tuple(config.mesh), devices)
    except ValueError as e:
        raise DryRunError(f"{e} (--num_devices / --topology)") from e
    t0 = time.perf_counter()
    stepper = Stepper(mc, config.trainable, config.optimizer, int(config.total_steps), mesh,
                      StepConfig(int(config.num_micro_batches), float(config.z_loss)))
    bs, seq = int(config.batch_size), int(config.seq_len)
    try:
        stepper.check_batch_size(bs)
    except ValueError as e:
        raise DryRunError(str(e)) from e
    state, frozen = stepper.abstract_state()
    build_s = time.perf_counter() - t0
    n_images = train_max_images(config, mc.num_image_tokens)
    batch = abstract_batch(stepper, bs, seq, n_images, mc.vision.image_size)
    trainable, n_frozen = stepper.partition.counts()
    report: dict[str, Any] = {
        "devices": len(devices), "platform": devices[0].platform, "device_kind": devices[0].device_kind,
        "mesh": dict(mesh.shape), "batch": {"batch_size": bs, "seq_len": seq, "max_images": n_images,
                                             "num_micro_batches": int(config.num_micro_batches)},
        "remat": mc.remat, "attention": mc.attention, "dtype": mc.dtype,
        "params": {"total": trainable + n_frozen, "trainable": trainable, "frozen": n_frozen},
        "per_device": {"trainable_params": _nbytes_per_device(state["params"]),
                       "opt_state": _nbytes_per_device(state["opt_state"]),
                       "frozen_params": _nbytes_per_device(frozen),
                       "batch": _nbytes_per_device(batch)},
        "sharding": _param_table(stepper), "build_s": build_s, "hbm_gb": float(hbm_gb), "problems": [],
    }
    ndims = {k: len(v.shape) for k, v in batch.items()}
    mem, flops, lower_s, compile_s = _compile(stepper.jit_train_step(ndims), (state, frozen, batch),
                                              mesh, stepper.rules)
    report["train"] = {"memory": mem, "flops": flops, "lower_s": lower_s, "compile_s": compile_s}
    mir_key, ev = next(((k, dict(e)) for k, e in (config.get("evals") or {}).items()
                        if (e.get("evaluator") or k) == "mir"), (None, {}))
    if eval_step and mir_key is not None:  # the first MIR entry of config.evals
        eseq = int(ev.get("seq_len") or seq)
        try:
            ebs = eval_batch_rows(int(ev.get("batch_size", 0)), stepper.data_parallel)
        except ValueError as e:
            report["problems"].append(f"evals.{mir_key}.batch_size: {e} (the trainer refuses it)")
        else:
            ebatch = abstract_batch(stepper, ebs, eseq, 1, mc.vision.image_size)
            mem_e, flops_e, lower_e, compile_e = _compile(
                stepper.jit_eval_step(ndims), (state, frozen, ebatch), mesh, stepper.rules)
            report["eval_mir"] = {"memory": mem_e, "flops": flops_e, "lower_s": lower_e, "compile_s": compile_e,
                                  "batch_size": ebs, "seq_len": eseq}
    peak = max(report["train"]["memory"]["total"], report.get("eval_mir", {}).get("memory", {}).get("total", 0))
    report["peak_bytes"] = peak
    report["fits"] = peak <= hbm_gb * GB
    return report


def _gb(n: float) -> str:
    return f"{n / GB:.2f} GB" if n >= GB / 10 else f"{n / 2**20:.1f} MB"


def verdict_line(r: Mapping) -> str:
    word = "fits" if r["fits"] else "DOES NOT FIT"
    return (f"verdict: {word}: peak {_gb(r['peak_bytes'])} per device vs --hbm_gb={r['hbm_gb']:g} "
            f"({r['devices']} x {r['platform']}, mesh {r['mesh']}, remat {r['remat']})")


def format_report(r: Mapping) -> str:
    p, d, b = r["params"], r["per_device"], r["batch"]
    lines = [
        f"dry run: {r['devices']} {r['platform']} devices ({r['device_kind']}), mesh {r['mesh']}, "
        f"remat {r['remat']}, attention {r['attention']}, dtype {r['dtype']}",
        f"batch: {b['batch_size']} x {b['seq_len']} tokens, {b['max_images']} image(s) a row, "
        f"{b['num_micro_batches']} micro-batch(es)",
        f"parameters: {p['total']:,} total, {p['trainable']:,} trainable, {p['frozen']:,} frozen",
        "per device (from the shardings): " + ", ".join(
            f"{k.replace('_', ' ')} {_gb(v)}" for k, v in d.items()),
        "sharding (largest parameters of each part):",
    ]
    width = max(len(row["key"]) for row in r["sharding"])
    for row in r["sharding"]:
        lines.append(f"  {row['key']:<{width}}  {str(tuple(row['shape'])):<22} {row['spec']:<34} "
                     f"shard {tuple(row['shard'])}  trainable: {row['trainable']}")
    for name in ("train", "eval_mir"):
        if name not in r:
            continue
        s, m = r[name], r[name]["memory"]
        what = "train step" if name == "train" else f"eval step with hidden states ({s['batch_size']} x {s['seq_len']})"
        lines.append(f"{what}: XLA memory per device: arguments {_gb(m['argument'])}, outputs {_gb(m['output'])}, "
                     f"donated/aliased {_gb(m['alias'])}, temporaries {_gb(m['temp'])}, total {_gb(m['total'])}; "
                     f"{s['flops']:.3e} FLOPs per device per step; lowered in {s['lower_s']:.1f} s, "
                     f"compiled in {s['compile_s']:.1f} s")
    if r["platform"] == "cpu":
        lines.append("(XLA:CPU's memory estimate, not the TPU compiler's: right in order of magnitude)")
    lines += [f"problem: {x}" for x in r["problems"]]
    lines.append(verdict_line(r))
    return "\n".join(lines)


def exit_status(r: Mapping) -> int:
    if r["problems"]:
        return 1
    return 0 if r["fits"] else EXIT_DOES_NOT_FIT


@dataclasses.dataclass
class Options:
    num_devices: int | None = None
    topology: str | None = None
    hbm_gb: float = 16.0


def run_cli(config, opts: Options) -> int:
    """train.py --dry_run: prints the report, returns the exit status (0 fits, 3 does not fit,
    1 a problem the trainer would refuse). Raises DryRunError / ConfigError for bad input."""
    if opts.num_devices is not None and opts.topology:
        raise DryRunError("--num_devices and --topology are exclusive")
    if opts.hbm_gb <= 0:
        raise DryRunError(f"--hbm_gb={opts.hbm_gb:g} must be > 0")
    devices = None
    if opts.topology:
        devices = topology_devices(opts.topology)
    elif opts.num_devices is not None and len(jax.devices()) != opts.num_devices:
        raise DryRunError(f"asked for {opts.num_devices} fake devices, the backend has {len(jax.devices())}")
    r = dry_run(config, hbm_gb=opts.hbm_gb, devices=devices)
    print(format_report(r), flush=True)
    return exit_status(r)


def fake_device_env(num_devices: int) -> dict[str, str]:
    """Environment of a fresh process with `num_devices` fake CPU devices."""
    env = dict(os.environ)
    flags = [f for f in env.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
    env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={int(num_devices)}"])
    env["JAX_PLATFORMS"] = "cpu"
    return env


__all__ = ["DryRunError", "EXIT_DOES_NOT_FIT", "GB", "Options", "abstract_batch", "configure_fake_devices",
           "dry_run", "exit_status", "format_report", "run_cli", "topology_devices", "verdict_line"]
