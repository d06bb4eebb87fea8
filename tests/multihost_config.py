"""`configs/llava15_pretrain.py:runlocal`, shrunk for tests/test_multiprocess.py (two processes on
2 CPU cores): a 40-sample caption source read one caption per row, so 5 steps of a global batch
of 8 (4 rows per host) read each host's 20-sample slice exactly once; fsdp over the two
processes, so both hold (and checkpoint) their own parameter shards; in-loop MIR at step 4 and
at the end.

    python train.py --config=tests/multihost_config.py --workdir=... [--coordinator_address=...]
"""

from configs import llava15_pretrain  # train.py runs from the repository root, which holds configs/

NUM_SAMPLES = 40


def get_config(arg=None):
    c = llava15_pretrain.get_config("runlocal")
    c.data.sources = [{"type": "synthetic", "kind": "caption", "template": "plain",
                       "num_samples": NUM_SAMPLES}]
    c.data.pack = False
    c.data.num_threads = 1
    c.model.text.num_layers = 2  # compile time: every XLA:CPU compile counts on 2 cores
    c.model.vision.num_layers = 1
    c.init_from = ""  # random weights: a shallower model than the shipped base
    c.total_steps = 5
    c.batch_size = 8
    c.mesh = (1, 2, 1)
    c.log_every = 1
    c.optimizer.warmup_steps = 1  # real updates from step 2 on, so the losses move
    c.checkpoint.every = 100
    # Held-out loss and MIR in the loop at step 4 (after the relaunch), and at the end (step 5);
    # one downstream evaluator and a sample caption at the end: gathered parameters, generation
    # on process 0 alone.
    c.evals = {"loss": {"every": 4, "num_samples": 8, "batch_size": 8},
               "mir": {"every": 4, "num_samples": 16, "batch_size": 8, "seq_len": 256},
               "caption": {"every": 0, "num_samples": 8, "batch_size": 8},
               "sample_captions": {"every": 0, "num_samples": 1}}
    return c
