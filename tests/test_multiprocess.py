"""Multi-host for real: two processes on localhost (JAX's gloo CPU collectives, one CPU device
each) run train.py with tests/multihost_config.py (llava15_pretrain:runlocal, shrunk); process 1
alone gets a SIGTERM at step 1 (a preemption notice reaching one host first), both stop at the
step they agree on, save and exit; both are relaunched to step 5. The first launch gives the
multi-process settings as flags, the relaunch as JAX_* environment variables.

Checked against a single process with the same two devices fed the same global batches
(tests/multihost_worker.py reference), never against the run's own output:
  (a) the losses of steps 1-5 equal the single process's within 1e-5;
  (b) the hosts' rows are disjoint and together are the whole 40-sample source;
  (c) on one host's SIGTERM both stop at the same step and write one orbax checkpoint (each its
      own shards and data-iterator state); the relaunch of both resumes from it;
  (d) only process 0 writes metrics, TensorBoard events, config.json and the plot;
  (e) the in-loop MIR (and held-out loss) at steps 4 and 5 equal the single process's.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from mir_jax import distributed
from mir_jax.train.metrics import read_jsonl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = ["-m", "tests.multihost_worker"]  # from ROOT (cwd), so `tests` and `configs` import
CONFIG = os.path.join(ROOT, "tests", "multihost_config.py")
TIMEOUT_S = 600  # ~75 s on 2 idle cores; much more when they are shared
SIGTERM_AT_STEP = 1  # the hosts agree on that step or a later one (seen: 0-2 steps later)
STOPPED = 128 + 15  # train.py's exit status after a SIGTERM (checkpoint saved)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(tmp_path, devices: int) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("JAX_COORDINATOR", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID"))}
    env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               TOKENIZERS_PARALLELISM="false",
               # The relaunch reads the train step the first launch compiled from disk.
               JAX_COMPILATION_CACHE_DIR=str(tmp_path / "jax_cache"),
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",
               JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")
    return env


def _start_pair(tmp_path, workdir, tag: str, sigterm_at_step: int = 0, via_env: bool = False):
    """Both processes of a launch: the multi-process settings as train.py flags, or (via_env)
    as the JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID variables."""
    port = _free_port()
    procs = []
    for pid in range(2):
        record = tmp_path / f"{tag}_p{pid}.json"
        cmd = [sys.executable, *WORKER, "train", str(record), str(sigterm_at_step), "--",
               f"--config={CONFIG}", f"--workdir={workdir}"]
        env = _env(tmp_path, 1)
        if via_env:
            env.update(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES="2",
                       JAX_PROCESS_ID=str(pid))
        else:
            cmd += [f"--coordinator_address=localhost:{port}", "--num_processes=2",
                    f"--process_id={pid}"]
        log = open(tmp_path / f"{tag}_p{pid}.log", "w")
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log,
                                       stderr=subprocess.STDOUT), log, record))
    return procs


def _finish(procs, deadline):
    results = []
    for proc, log, record in procs:
        try:
            rc = proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            for p, _, _ in procs:
                p.kill()
            rc = "timeout"
        log.close()
        with open(log.name) as f:
            text = f.read()
        results.append((rc, text, json.load(open(record)) if os.path.exists(record) else None))
    return results


def _check_ok(results, allowed=(0,)):
    for pid, (rc, text, record) in enumerate(results):
        assert rc in allowed and record is not None, f"process {pid} exited {rc}:\n{text[-4000:]}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("multiprocess")
    workdir = tmp_path / "workdir"
    t0 = time.monotonic()
    deadline = t0 + TIMEOUT_S
    # The single-process reference runs alongside the first launch (2 cores, 3 processes).
    ref_path = tmp_path / "reference.json"
    ref_env = _env(tmp_path, 2)
    ref_env.pop("JAX_COMPILATION_CACHE_DIR")
    ref_log = open(tmp_path / "reference.log", "w")
    ref = subprocess.Popen([sys.executable, *WORKER, "reference", str(ref_path)], cwd=ROOT,
                           env=ref_env, stdout=ref_log, stderr=subprocess.STDOUT)
    try:
        return _launches(tmp_path, workdir, ref, ref_path, ref_log, t0, deadline)
    finally:
        if ref.poll() is None:
            ref.kill()
        ref_log.close()


def _launches(tmp_path, workdir, ref, ref_path, ref_log, t0, deadline):
    first = _finish(_start_pair(tmp_path, workdir, "first", sigterm_at_step=SIGTERM_AT_STEP),
                    deadline)
    _check_ok(first, (STOPPED,))
    steps = sorted(int(s) for s in os.listdir(workdir / "checkpoints") if s.isdigit())
    after_first = {
        "steps": steps,
        "events": sorted(os.listdir(workdir / "tensorboard")),
        "ckpt": {item: sorted(os.listdir(workdir / "checkpoints" / str(steps[0]) / item))
                 for item in ("state", "frozen", "data")} if len(steps) == 1 else None,
    }
    t1 = time.monotonic()
    second = _finish(_start_pair(tmp_path, workdir, "second", via_env=True), deadline)
    _check_ok(second)
    t2 = time.monotonic()
    rc = ref.wait(timeout=max(1.0, deadline - time.monotonic()))
    ref_log.flush()
    assert rc == 0, open(ref_log.name).read()[-4000:]
    print(f"\nfirst launch {t1 - t0:.1f}s (with the reference alongside), relaunch {t2 - t1:.1f}s, "
          f"reference done at {time.monotonic() - t0:.1f}s")
    return dict(workdir=workdir, first=first, second=second, after_first=after_first,
                reference=json.load(open(ref_path)))


def _metrics(workdir):
    return read_jsonl(os.path.join(workdir, "metrics.jsonl"))


@pytest.mark.slow
def test_losses_equal_one_process_with_the_same_global_batch(runs):
    train = [r for r in _metrics(runs["workdir"]) if r["split"] == "train"]
    assert [r["step"] for r in train] == [1, 2, 3, 4, 5]  # one row per step: one writer
    got = np.array([r["loss"] for r in train])
    want = np.array(runs["reference"]["losses"])
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert np.ptp(want) > 1e-2  # the parameters did move: equal losses mean equal updates


@pytest.mark.slow
def test_hosts_read_disjoint_slices_that_cover_the_data(runs):
    ref = runs["reference"]
    for pid in range(2):
        # Steps 1-s from the first launch, the rest from the relaunch (the restored position).
        rows = runs["first"][pid][2]["steps"] + runs["second"][pid][2]["steps"]
        assert len(rows) == 5 and all(len(r) == 4 for r in rows)  # global batch 8 = 2 x 4
        assert rows == ref["shards"][pid], f"process {pid} did not read data shard {pid} of 2"
    host0 = [h for r in ref["shards"][0] for h in r]
    host1 = [h for r in ref["shards"][1] for h in r]
    assert len(set(host0)) == len(host0) == 20 and len(set(host1)) == len(host1) == 20
    assert not set(host0) & set(host1)
    assert set(host0) | set(host1) == set(ref["all"])  # the whole 40-sample source, once


@pytest.mark.slow
def test_one_hosts_sigterm_stops_both_at_one_checkpoint_and_both_resume(runs):
    first = runs["after_first"]
    # Where the hosts agree to stop depends on when the notice reaches process 0, but it is
    # one step for both, after the signal and before the end.
    assert len(first["steps"]) == 1 and SIGTERM_AT_STEP <= first["steps"][0] < 5, first["steps"]
    stop = first["steps"][0]
    for pid, (_, text, record) in enumerate(runs["first"]):
        assert f"stopped by SIGTERM at step {stop}" in text, f"process {pid}:\n{text[-3000:]}"
        assert len(record["steps"]) == stop
    # One checkpoint written by both: each process's parameter shards (fsdp over the two
    # processes) and its own data-iterator position.
    for item in ("state", "frozen"):
        assert {"ocdbt.process_0", "ocdbt.process_1"} <= set(first["ckpt"][item]), first["ckpt"]
    assert {"process_0-of-2.json", "process_1-of-2.json"} <= set(first["ckpt"]["data"])
    for pid, (_, text, _) in enumerate(runs["second"]):
        assert "resumed from" in text and f"at step {stop}" in text, f"process {pid}:\n{text[-3000:]}"
    assert sorted(int(s) for s in os.listdir(runs["workdir"] / "checkpoints") if s.isdigit()) == [stop, 5]


@pytest.mark.slow
def test_only_process_zero_writes_logs_and_plots(runs):
    workdir = str(runs["workdir"])
    for launch in ("first", "second"):
        p0, p1 = (r[2]["writes"] for r in runs[launch])
        assert [w for w in p1 if w.startswith(workdir)] == [], f"{launch}: process 1 wrote {p1}"
        names = {os.path.relpath(w, workdir).split(os.sep)[0] for w in p0 if w.startswith(workdir)}
        assert {"metrics.jsonl", "tensorboard", "config.json"} <= names, (launch, names)
    assert "loss_mir.png" in {os.path.basename(w) for w in runs["second"][0][2]["writes"]}
    assert len(runs["after_first"]["events"]) == 1  # one TensorBoard writer
    # The downstream evaluator ran once, at the end, on process 0's gathered parameters.
    down = [r for r in _metrics(runs["workdir"]) if r["split"] == "downstream"]
    assert [r["step"] for r in down] == [5] and 0.0 <= down[0]["caption/cider"] < 10.0, down
    assert os.path.exists(os.path.join(workdir, "evals", "step_5", "caption_scores.json"))
    # Only process 0 prints the final captions and the MIR table.
    assert "generated:" in runs["second"][0][1] and "generated:" not in runs["second"][1][1]


@pytest.mark.slow
def test_in_loop_mir_equals_one_process(runs):
    evals = {r["step"]: r for r in _metrics(runs["workdir"]) if r["split"] == "eval"}
    assert sorted(evals) == [4, 5]
    for step in (4, 5):
        want = runs["reference"]["eval"][str(step)]
        got = evals[step]
        np.testing.assert_allclose(got["mir"], want["mir"], rtol=0, atol=1e-5)
        np.testing.assert_allclose(got["mir_per_layer"], want["mir_per_layer"], rtol=1e-5, atol=0)
        # The held-out loss: every host reads the whole eval set, so the same tokens count.
        assert got["tokens"] == want["tokens"]
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=0, atol=1e-5)
    assert abs(evals[5]["mir"] - evals[4]["mir"]) > 1e-4  # the values are not stale copies


# ----- the pieces, without processes ----------------------------------------------------------
@pytest.fixture
def no_cluster_env(monkeypatch):
    for k in (distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID,
              "COORDINATOR_ADDRESS", "MEGASCALE_COORDINATOR_ADDRESS", "SLURM_NTASKS",
              "OMPI_COMM_WORLD_SIZE", "TPU_WORKER_HOSTNAMES", "KUBERNETES_SERVICE_HOST"):
        monkeypatch.delenv(k, raising=False)
    return monkeypatch


def test_settings_come_from_flags_then_environment(no_cluster_env):
    assert distributed.resolve() is None  # nothing set, no cluster: one process
    assert distributed.resolve(num_processes=1) is None
    no_cluster_env.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    no_cluster_env.setenv("JAX_NUM_PROCESSES", "4")
    no_cluster_env.setenv("JAX_PROCESS_ID", "3")
    assert distributed.resolve() == {"coordinator_address": "10.0.0.1:1234", "num_processes": 4,
                                     "process_id": 3}
    assert distributed.resolve("h:9", 2, 1) == {"coordinator_address": "h:9", "num_processes": 2,
                                                "process_id": 1}
    no_cluster_env.delenv("JAX_COORDINATOR_ADDRESS")  # left to JAX's cluster detection
    assert distributed.resolve()["coordinator_address"] is None
    no_cluster_env.setenv("SLURM_NTASKS", "8")
    no_cluster_env.delenv("JAX_NUM_PROCESSES")
    no_cluster_env.delenv("JAX_PROCESS_ID")
    assert distributed.resolve() == {"coordinator_address": None, "num_processes": None,
                                     "process_id": None}


@pytest.mark.parametrize("args, message", [
    (("h:1", 2, 2), "process_id=2 is outside 0..1"),
    (("h:1", 0, 0), "num_processes=0: must be at least 1"),
    (("h", 2, 0), "expected HOST:PORT"),
    (("h:1", "two", 0), "--num_processes='two' is not an integer"),
])
def test_impossible_settings_are_one_line_errors(no_cluster_env, args, message):
    with pytest.raises(distributed.DistributedSetupError, match=message):
        distributed.resolve(*args)


def test_missing_coordinator_names_what_to_set(no_cluster_env):
    """What JAX raises when its cluster detection finds nothing (as on a plain GPU machine)
    becomes one line naming the flag and the variable. (JAX itself is stubbed: this process
    has run computations already, after which jax.distributed.initialize refuses to run.)"""
    import jax

    calls = []

    def jax_initialize(**kwargs):
        calls.append(kwargs)
        raise ValueError("coordinator_address should be defined.")

    no_cluster_env.setattr(jax.distributed, "initialize", jax_initialize)
    with pytest.raises(distributed.DistributedSetupError, match=r"without --coordinator_address "
                       r"\(or \$JAX_COORDINATOR_ADDRESS\)"):
        distributed.initialize(None, 2, 1)
    assert calls == [{"coordinator_address": None, "num_processes": 2, "process_id": 1}]


def test_host_batch_slice_follows_the_devices_rows():
    """8 fake devices standing for 4 hosts of 2 (host = device id // 2)."""
    import jax

    from mir_jax.sharding import batch_sharding, make_mesh

    host = lambda d: d.id // 2
    data = batch_sharding(make_mesh((8, 1, 1)), 1)
    assert [distributed.host_batch_slice(data, 16, process_index=p, process_of=host)
            for p in range(4)] == [(p, 4, 4) for p in range(4)]
    fsdp = batch_sharding(make_mesh((2, 4, 1)), 1)
    assert [distributed.host_batch_slice(fsdp, 16, process_index=p, process_of=host)
            for p in range(4)] == [(p, 4, 4) for p in range(4)]
    # A tensor axis of 4 spanning hosts 0-1 and 2-3: each pair holds the same rows and so
    # must read the same shard.
    tensor = batch_sharding(make_mesh((2, 1, 4)), 1)
    assert [distributed.host_batch_slice(tensor, 16, process_index=p, process_of=host)
            for p in range(4)] == [(0, 2, 8), (0, 2, 8), (1, 2, 8), (1, 2, 8)]
    # Hosts whose devices are not adjacent in the mesh hold rows that are not one block.
    scattered = batch_sharding(make_mesh((8, 1, 1), [jax.devices()[i] for i in (0, 2, 1, 3, 4, 5, 6, 7)]), 1)
    with pytest.raises(ValueError, match="not one aligned block"):
        distributed.host_batch_slice(scattered, 16, process_index=0, process_of=host)
    assert distributed.host_batch_slice(data, 16) == (0, 1, 16)  # this (single) process
