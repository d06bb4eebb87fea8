"""MM1-style pre-training mixture: interleaved 45%, captions 45%, text-only 10%, a
C-Abstractor connector with 144 image tokens, and the connector + LLM trained (vision frozen).

    python train.py --config=configs/mm1_mix.py:runlocal --workdir=/tmp/mir_jax_runlocal

`runlocal`: a tiny model on the embedded synthetic corpus (the same 45/45/10 mixture) that
runs on a CPU in a few minutes. Without it: LLaVA-1.5-7B shapes; set `init_from` to a stage-1
checkpoint (`mir_jax.weights.hf.build_stage1`) and `data.sources` to your data (a caption JSONL, an
interleaved JSONL and a text file; see `mir_jax.data.mixture`).
"""

from configs import common
from mir_jax.models import ConnectorConfig


def get_config(arg=None):
    opts = common.parse_arg(arg)
    c = common.base_config()
    c.model = common.llava15_7b_model(ConnectorConfig(name="c_abstractor", num_tokens=144))
    c.data.sources = [
        {"type": "captions", "path": "captions.jsonl", "weight": 0.45},
        {"type": "interleaved", "path": "interleaved.jsonl", "weight": 0.45},
        {"type": "text", "path": "text.jsonl", "weight": 0.10},
    ]
    c.data.pack = True
    c.trainable.connector = True
    c.trainable.llm = "all"
    c.batch_size = 512
    c.seq_len = 4096
    c.total_steps = 100_000
    c.optimizer.lr = 1e-4
    c.optimizer.warmup_steps = 2000
    c.optimizer.end_factor = 0.1
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 0.1
    c.mesh = (1, -1, 1)
    # The dry run (BENCHMARKS.md): on 256 x 16 GB chips only "full" fits this batch x length.
    c.model.remat = "full"
    if "runlocal" in opts:
        # The embedded corpus: the same 45/45/10 mixture, synthetic (see data.mm1_sources).
        common.apply_runlocal(c, ConnectorConfig(name="c_abstractor", num_tokens=16, depth=1))
        c.trainable.llm = "all"
        c.evals.update(common.runlocal_evals("pretrain"))
    return c
