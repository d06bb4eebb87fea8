"""MIR's central claim (arXiv 2410.07167): MIR after pre-training ranks pre-training variants
in the order of their benchmark scores after the same SFT, and does so better than the
pre-training loss.

    python study.py --study=configs/studies/mir_vs_sft.py:runlocal --workdir=/tmp/mir_vs_sft

Stages: stage 1 (in miniature from the shipped base), one variant each -> the same SFT for all
(150 steps in miniature) -> VQA, POPE, multiple choice and captioning on the embedded
benchmark; `score` is the mean of the three accuracies and CIDEr-D (what each measured:
BENCHMARKS.md, "Studies"). MIR and loss are stage 1's final held-out values. Variants differ in pre-training quality as
the paper's do: training steps, data scale, the connector, unlocking the LLM, MoCa.

Full size: the variants are the same overrides of configs/llava15_pretrain.py (steps in
units of its 2,180) with the paths given by --set (see configs/studies/common.py).
"""

from configs.studies import common


def get_study(arg=None):
    runlocal = common.parse_arg(arg)
    full = 300 if runlocal else 2180  # stage 1's full length (LCS-558K: one epoch = 2,180 steps)
    source = ({"type": "synthetic", "kind": "caption", "template": "plain"} if runlocal else
              {"type": "llava", "path": "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
               "image_folder": "LLaVA-Pretrain/images", "template": "plain"})

    def data_scale(n):  # the first n samples of stage 1's captions
        return {"stage1": {"data.sources": [{**source, "data_scale": n}]}}

    def steps(n):  # a shorter stage 1 keeps the recipe's warmup share
        return {"stage1": {"total_steps": n, "optimizer.warmup_steps": max(n // 15, 1)}}

    variants = [
        {"name": "steps_3pct", "overrides": steps(max(full // 30, 1))},
        {"name": "steps_15pct", "overrides": steps(full * 15 // 100)},
        {"name": "full", "overrides": {}},
        {"name": "data_1pct", "overrides": data_scale(48 if runlocal else 5_581)},
        {"name": "linear_connector", "overrides": {"all": {"model.connector.name": "linear"}}},
        {"name": "llm_unlocked", "overrides": {"stage1": {"trainable.llm": "all",
                                                          "optimizer.lr": 2e-3 if runlocal else 2e-5}}},
        {"name": "moca", "overrides": {"all": {"model.moca": True}}},
    ]
    return {
        "name": "mir_vs_sft",
        "description": "Stage-1 variants of differing quality, the same SFT for all: does stage-1 MIR rank "
                       "them by their post-SFT score (Spearman <= -0.7 wanted), and does stage-1 loss?",
        "stages": [common.stage1(runlocal), common.ranking_sft(runlocal)],
        "variants": variants,
        "mir_stage": "stage1",
        "score_stage": "sft",
        "score_metrics": common.WITH_CAPTION_SCORE,
    }
