"""LLaVA-1.5 stage 1 (feature alignment): LCS-558K captions with the "plain" template,
mlp2x_gelu connector, only the connector trains; lr 1e-3, global batch 256, one epoch
(558,128 / 256 = 2,180 steps), warmup 3%, cosine, no weight decay.

Set `init_from` to a stage-1 start (`mir_jax.weights.hf.build_stage1(clip, vicuna)` saved with
`hf.save_pretrained`) and `data.sources[0].path` / `image_folder` to the LCS-558K layout
(blip_laion_cc_sbu_558k.json + images/).

`runlocal`: the miniature model on embedded captions, from the shipped base's vision tower and
LLM (`configs/common.py:MINIATURE_BASE`, made by `configs/stage0.py`; `--config.init_from=S0`
takes another stage 0) under a fresh connector (`init_parts="vision,llm"`), as LLaVA's stage 1
does.
"""

from configs import common
from mir_jax.models import ConnectorConfig


def get_config(arg=None):
    opts = common.parse_arg(arg)
    c = common.base_config()
    c.model = common.llava15_7b_model(ConnectorConfig(name="mlp2x_gelu"))
    c.data.sources = [{"type": "llava", "path": "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
                       "image_folder": "LLaVA-Pretrain/images", "template": "plain"}]
    c.trainable.connector = True
    c.trainable.llm = "none"
    c.trainable.vision = "none"
    c.batch_size = 256
    c.seq_len = 2048
    c.total_steps = 2180
    c.optimizer.lr = 1e-3
    c.optimizer.warmup_steps = 65
    c.optimizer.weight_decay = 0.0
    c.checkpoint.every = 500
    common.held_out_every(c, 500)
    c.mesh = (1, -1, 1)
    # The dry run (BENCHMARKS.md): on 256 x 16 GB chips only "full" fits this batch x length.
    c.model.remat = "full"
    if "runlocal" in opts:
        common.apply_runlocal(c, ConnectorConfig(name="mlp2x_gelu"),
                              sources=[{"type": "synthetic", "kind": "caption", "template": "plain"}])
        c.optimizer.lr = 1e-2
        c.optimizer.weight_decay = 0.0
        c.evals.update(common.runlocal_evals("pretrain"))
        # LLaVA's stage-1 start: a fresh connector on the vision tower and LLM of init_from, here
        # a configs/stage0.py workdir (a no-op while init_from is ""). At full size init_from is
        # already that start (hf.build_stage1's fresh connector), taken whole ("all").
        c.init_parts = "vision,llm"
    return c
