"""More pre-training data is not always better ("Rethinking Overlooked Aspects in VLMs"; MIR's
data-scale study): stage 1 on 4 nested subsets spanning 32x, the same steps and the same SFT
for each, then MIR, loss and the post-SFT scores (VQA, POPE, multiple choice and captioning,
as in mir_vs_sft).

    python study.py --study=configs/studies/data_scale.py:runlocal --workdir=/tmp/data_scale

`data_scale` keeps the first N samples of each stage-1 source (`mir_jax.data.mixture`), so the
subsets are nested. Miniature: 64 to 2,048 synthetic captions (300 steps x 16 = 4,800 samples
seen: the small subsets are repeated many times, the largest 2.3 times). Full size: LCS-558K's
first 17k, 70k, 279k and all 558k (set the sources with --set=stage1.data.sources='[...]' and
the scales with this file's FULL_SCALES).
"""

from configs.studies import common

RUNLOCAL_SCALES = (64, 256, 1024, 2048)
FULL_SCALES = (17_442, 69_766, 279_064, 558_128)


def get_study(arg=None):
    runlocal = common.parse_arg(arg)
    scales = RUNLOCAL_SCALES if runlocal else FULL_SCALES
    source = ({"type": "synthetic", "kind": "caption", "template": "plain"} if runlocal else
              {"type": "llava", "path": "LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
               "image_folder": "LLaVA-Pretrain/images", "template": "plain"})
    return {
        "name": "data_scale",
        "description": "Stage-1 data scale sweep (nested subsets, 32x), the same steps and SFT for each.",
        "stages": [common.stage1(runlocal), common.ranking_sft(runlocal)],
        "variants": [{"name": f"scale_{n}", "overrides": {"stage1": {"data.sources": [{**source, "data_scale": n}]}}}
                     for n in scales],
        "mir_stage": "stage1",
        "score_stage": "sft",
        "score_metrics": common.WITH_CAPTION_SCORE,
    }
