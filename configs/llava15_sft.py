"""LLaVA-1.5 stage 2 (visual instruction tuning): the mix665k conversations with the vicuna_v1
template, connector + whole LLM trained (vision frozen); lr 2e-5, global batch 128, one epoch
(665,298 / 128 = 5,198 steps), warmup 3%, cosine, no weight decay.

Set `init_from` to the stage-1 result and `data.sources[0]` to llava_v1_5_mix665k.json and its
image root.
"""

from configs import common
from mir_jax.models import ConnectorConfig


def get_config(arg=None):
    opts = common.parse_arg(arg)
    c = common.base_config()
    c.model = common.llava15_7b_model(ConnectorConfig(name="mlp2x_gelu"))
    c.data.sources = [{"type": "llava", "path": "llava_v1_5_mix665k.json", "image_folder": "data",
                       "template": "vicuna_v1"}]
    c.trainable.connector = True
    c.trainable.llm = "all"
    c.batch_size = 128
    c.seq_len = 2048
    c.total_steps = 5198
    c.optimizer.lr = 2e-5
    c.optimizer.warmup_steps = 156
    c.optimizer.weight_decay = 0.0
    c.checkpoint.every = 1000
    common.held_out_every(c, 1000)
    # 2-way tensor parallelism: the global batch of 128 rows splits over at most 128
    # data-parallel shards, so on 256 chips fsdp x tensor = 128 x 2 (BENCHMARKS.md, "Dry run").
    c.mesh = (1, -1, 2)
    if "runlocal" in opts:
        common.apply_runlocal(c, ConnectorConfig(name="mlp2x_gelu"),
                              sources=[{"type": "synthetic", "kind": "qa", "template": "vicuna_v1"}])
        # The whole stage-1 result (`--config.init_from=STAGE1`); by default the shipped base
        # with stage 0's connector. With the miniature BPE a conversation is 30-130 tokens.
        c.init_parts = "all"
        c.data.system = "A chat between a user and an assistant."
        c.seq_len = 256
        c.batch_size = 8
        c.evals.update(common.runlocal_evals("sft"))
    return c
