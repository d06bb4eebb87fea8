"""Helper processes of tests/test_multiprocess.py.

    python -m tests.multihost_worker train RECORD.json [SIGTERM_AT_STEP] -- TRAIN.PY FLAGS...
        Runs train.py's own main (flags as given) and records, for the test, what this process
        did: the rows of every training batch that reached its devices (one fingerprint per
        row) and every file it opened for writing outside checkpoints/. SIGTERM_AT_STEP > 0:
        process 1 (only) sends itself SIGTERM once it has dispatched that step, as a
        preemption notice that reaches one host first.

    python -m tests.multihost_worker reference OUT.json
        The single-process expectation, on 2 local devices (the two processes' global device
        count): tests/multihost_config.py's run fed, every step, host 0's and host 1's data
        shards concatenated into one global batch; losses, held-out loss and in-loop MIR at the
        eval steps; the fingerprints of each shard's rows and of the whole data set.
"""

from __future__ import annotations

import atexit
import builtins
import hashlib
import json
import os
import signal
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # run as `python -m tests.multihost_worker` from it


def row_fingerprints(input_ids, pixel_values) -> list[str]:
    """One hash per batch row (its tokens and its pixels)."""
    import numpy as np

    ids, px = np.asarray(input_ids), np.asarray(pixel_values)
    return [hashlib.sha1(ids[i].tobytes() + px[i].tobytes()).hexdigest()[:16] for i in range(len(ids))]


def _local_rows(array):
    """This process's rows of a global batch array, in row order (replicas dropped)."""
    import numpy as np

    shards = {}
    for s in array.addressable_shards:
        shards.setdefault(s.index[0].start or 0, np.asarray(s.data))
    return np.concatenate([shards[k] for k in sorted(shards)])


def _faster_start() -> None:
    """Test-time saving only, nothing the run computes depends on it: tensorboardX imports
    torch (~3 s on 2 busy cores) just to accept torch tensors."""
    sys.modules.setdefault("torch", None)  # `import torch` raises ImportError: tensorboardX copes


def train(record_path: str, sigterm_at_step: int, argv: list[str]) -> None:
    _faster_start()
    import jax

    from mir_jax.train.step import Stepper

    record = {"steps": [], "writes": []}
    workdir = next(a.split("=", 1)[1] for a in argv if a.startswith("--workdir="))
    checkpoints = os.path.join(os.path.abspath(workdir), "checkpoints") + os.sep

    original_open = builtins.open

    def recording_open(file, mode="r", *args, **kwargs):
        if isinstance(file, (str, bytes, os.PathLike)) and any(c in mode for c in "wax+"):
            path = os.path.abspath(os.fsdecode(file))
            if not path.startswith(checkpoints):
                record["writes"].append(path)
        return original_open(file, mode, *args, **kwargs)

    builtins.open = recording_open

    original_step = Stepper.train_step

    def recording_step(self, state, frozen, batch):
        record["steps"].append(row_fingerprints(_local_rows(batch["input_ids"]),
                                                _local_rows(batch["pixel_values"])))
        out = original_step(self, state, frozen, batch)
        if len(record["steps"]) == sigterm_at_step and jax.process_index() == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    Stepper.train_step = recording_step

    def dump():
        record["process_index"] = jax.process_index() if jax.distributed.is_initialized() else 0
        with original_open(record_path, "w") as f:
            json.dump(record, f)

    atexit.register(dump)
    sys.argv = [os.path.join(ROOT, "train.py"), *argv]
    import runpy

    runpy.run_path(sys.argv[0], run_name="__main__")


def reference(out_path: str) -> None:
    import tempfile

    import numpy as np

    from mir_jax.data import make_train_iterator
    from mir_jax.train.evaluations import Evaluations
    from mir_jax.train.loop import Setup
    from mir_jax.train.step import global_batch
    from tests import multihost_config

    config = multihost_config.get_config()
    hosts = 2
    out = {"losses": [], "eval": {}, "shards": [[] for _ in range(hosts)]}
    with tempfile.TemporaryDirectory() as workdir:
        setup = Setup(config, workdir)
        st = setup.stepper
        assert setup.process_count == 1 and len(st.mesh.devices.flat) == 2, st.mesh
        _, state, frozen = setup.initial_state()
        evaluations = Evaluations(setup, state, frozen)  # the fixed held-out and MIR sets
        local = int(config.batch_size) // hosts
        shards = [make_train_iterator(config.data, batch_size=local, seed=int(config.seed),
                                      shard_index=p, shard_count=hosts, **setup.data_kwargs)
                  for p in range(hosts)]
        for step in range(1, int(config.total_steps) + 1):
            parts = [next(it) for it in shards]
            for p, b in enumerate(parts):
                out["shards"][p].append(row_fingerprints(b["input_ids"], b["pixel_values"]))
            batch = {k: np.concatenate([b[k] for b in parts]) for k in parts[0]}
            state, metrics = st.train_step(state, frozen, global_batch(batch, st))
            out["losses"].append(float(metrics["loss"]))
            if step % int(config.evals.mir.every) == 0 or step == int(config.total_steps):
                out["eval"][str(step)] = evaluations.held_out(step, state, frozen)
        # The whole data set: one epoch of the (unsharded) source, read by one host.
        n = multihost_config.NUM_SAMPLES
        everything = next(make_train_iterator(config.data, batch_size=n, seed=int(config.seed),
                                              **setup.data_kwargs))
        out["all"] = row_fingerprints(everything["input_ids"], everything["pixel_values"])
        setup.checkpointer.close()
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "train":
        sep = sys.argv.index("--")
        head = sys.argv[2:sep]
        train(head[0], int(head[1]) if len(head) > 1 else 0, sys.argv[sep + 1:])
    elif mode == "reference":
        reference(sys.argv[2])
    else:
        sys.exit(f"unknown mode {mode!r}")
