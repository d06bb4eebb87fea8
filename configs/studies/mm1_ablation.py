"""MM1's connector ablation (arXiv 2403.09611, section 3.2): the connector type matters less
than the number of image tokens. Connector (avgpool, attnpool, c_abstractor) x image tokens,
each pre-trained on the MM1 mixture (45% captions, 45% interleaved, 10% text) and scored, as
MM1 scores pre-training, by 0- and 4-shot captioning and VQA.

    python study.py --study=configs/studies/mm1_ablation.py:runlocal --workdir=/tmp/mm1_ablation

Miniature: the tiny vision tower sees 32 x 32 images as 4 x 4 patches, so the token counts
are 4 and 16 (MM1's 64 and 144 at 336 px); the vision tower and LLM come from the shipped
base (configs/stage0.py), the LLM trains (MM1 pre-trains the LLM too). Full size: configs/mm1_mix.py with
144 and 64 tokens; give init_from and the data with --set.
"""

from configs.studies import common

CONNECTORS = ("avgpool", "attnpool", "c_abstractor")
FEW_SHOT_EVALS = {n + (f"_{k}shot" if k else ""): {"evaluator": n, "every": 0, "num_samples": 64,
                                                    **({"shots": k} if k else {})}
                  for n in ("caption", "vqa") for k in (0, 4)}
FEW_SHOT_SCORE = ["caption/cider", "caption_4shot/cider", "vqa/accuracy", "vqa_4shot/accuracy"]


def get_study(arg=None):
    runlocal = common.parse_arg(arg)
    tokens = (4, 16) if runlocal else (64, 144)
    stage = common.stage1(runlocal, config="configs/mm1_mix.py", evals=FEW_SHOT_EVALS)
    stage["name"] = "pretrain"
    return {
        "name": "mm1_ablation",
        "description": "Connector x image tokens after MM1-mixture pre-training, scored by 0-/4-shot "
                       "captioning (CIDEr) and VQA.",
        "stages": [stage],
        "variants": [{"name": f"{c}_{n}", "overrides": {"pretrain": {"model.connector.name": c,
                                                                     "model.connector.num_tokens": n}}}
                     for c in CONNECTORS for n in tokens],
        "mir_stage": "pretrain",
        "score_stage": "pretrain",
        "score_metrics": FEW_SHOT_SCORE,
    }
