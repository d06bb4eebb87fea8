"""Pieces the shipped studies share: the LLaVA chain (stage 1 -> SFT) in
miniature or full size, and the embedded benchmark at the end of a run.

In miniature (`:runlocal`) every study starts from the shipped base (`configs/common.py`:
MINIATURE_BASE, the vision tower and LLM `configs/stage0.py` pre-trained on the embedded corpus;
no study retrains it), so stage 1 trains a fresh connector between a pretrained vision tower and
a pretrained, frozen LLM, as LLaVA's does. At full size the vision tower and the LLM are someone
else's (CLIP and Vicuna): give the stage-1 start and the paths with `study.py --set`, e.g.
    --set=stage1.init_from=/ckpt/clip-vicuna-stage1-start --set=all.tokenizer=/ckpt/vicuna-7b-v1.5
    --set=stage1.data.sources='[...LCS-558K...]' --set=sft.data.sources='[...mix665k...]'
(`hf.build_stage1(clip, vicuna)` saved with `hf.save_pretrained` makes the stage-1 start).
"""

from __future__ import annotations

from configs.common import held_out_evals

# The benchmark after SFT: every evaluator at the end of the run only ("every": 0), on the
# embedded benchmark (or, full size, the files the evaluator options name).
SFT_EVALS = {n: {"every": 0, "num_samples": 64} for n in ("vqa", "pope", "multiple_choice")}
SFT_SCORE = ["vqa/accuracy", "pope/accuracy", "multiple_choice/accuracy"]
# Captioning after SFT as well, for the studies that rank stage-1 variants: in the miniature it
# is the one benchmark whose post-SFT score depends on stage 1 (docs/miniature_world.md). 256
# samples, since at 64 CIDEr-D moved by up to 0.4 between two runs of the same model.
WITH_CAPTION_EVALS = {**SFT_EVALS, "caption": {"every": 0, "num_samples": 256}}
WITH_CAPTION_SCORE = [*SFT_SCORE, "caption/cider"]


# Study runs keep what the study reads (the final held-out loss and MIR, the final scores)
# and drop what only a person watching a single run wants (sample captions, mid-run evals).
def _quiet_evals(runlocal: bool, evals) -> dict:
    """A run's whole `evals` override: the recipe's held-out loss and MIR and `evals`, all at
    the end only."""
    return {**held_out_evals(runlocal, every=0), **dict(evals or {})}


def parse_arg(arg: str | None) -> bool:
    """True for "runlocal"; anything else but nothing is an error."""
    opts = {a.strip() for a in (arg or "").split(",") if a.strip()}
    if opts - {"runlocal"}:
        raise ValueError(f"unknown study option(s) {sorted(opts - {'runlocal'})}; known: ['runlocal']")
    return "runlocal" in opts


def stage1(runlocal: bool, config: str = "configs/llava15_pretrain.py", evals=None, **overrides) -> dict:
    """LLaVA stage 1: a fresh connector between the (frozen) vision tower and LLM (in miniature
    the shipped base's, the recipe's default `init_from`)."""
    over = {"evals": _quiet_evals(runlocal, evals), **overrides}
    return {"name": "stage1", "config": config + (":runlocal" if runlocal else ""), "overrides": over}


def sft(runlocal: bool, evals=None, **overrides) -> dict:
    """LLaVA stage 2 (instruction tuning) from the stage-1 result, scored at its end."""
    over = {"init_parts": "all", "evals": _quiet_evals(runlocal, SFT_EVALS if evals is None else evals),
            **overrides}
    return {"name": "sft", "config": "configs/llava15_sft.py" + (":runlocal" if runlocal else ""),
            "init_from": "stage1", "overrides": over}


def ranking_sft(runlocal: bool) -> dict:
    """The SFT of the studies that rank stage-1 variants (mir_vs_sft, data_scale), scored with
    WITH_CAPTION_SCORE. In miniature a modest 150 steps (the chain's budget in
    docs/miniature_world.md), so that what stage 1 left is not simply trained over; at full
    size the recipe's own length."""
    return sft(runlocal, evals=WITH_CAPTION_EVALS, **({"total_steps": 150} if runlocal else {}))
