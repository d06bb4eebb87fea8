"""The MIR paper's MoCa (Modality Calibration): LLaVA-1.5 SFT with a learnable scale and shift
on the vision tokens after every decoder layer, trained with the rest of the recipe.

Options (comma list): "runlocal"; "pretrain" to add MoCa to stage 1 instead (connector + MoCa).
The MIR paper's unlock variants are plain overrides on any config, e.g.
`--config.trainable.vision=from:12` (ViT layers 12..) or `--config.trainable.llm=until:8`
(the LLM's first 8 layers).
"""

from configs import common, llava15_pretrain, llava15_sft


def get_config(arg=None):
    opts = common.parse_arg(arg, known=("runlocal", "pretrain"))
    base = llava15_pretrain if "pretrain" in opts else llava15_sft
    c = base.get_config(",".join(sorted(opts - {"pretrain"})))
    c.model.moca = True
    c.model.moca_std = 0.0  # identity at init: the base recipe's starting point is unchanged
    c.trainable.moca = True
    return c
