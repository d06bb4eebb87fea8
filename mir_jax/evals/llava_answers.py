"""Answer files where LLaVA-1.5's eval scripts open them (`evaluate.py --llava_answers_dir=DIR`).

DIR plays the part of LLaVA's ``playground/data/eval``; each benchmark read from a file gets a
copy of its answer file at the path that benchmark's ``scripts/v1_5/eval/*.sh`` writes (e.g.
``vqav2/answers/SPLIT/MODEL/merge.jsonl``, ``pope/answers/MODEL.jsonl``), and VizWiz its EvalAI
upload (``vizwiz/answers_upload/MODEL.json``). The table of paths, SPLIT and MODEL:
docs/evaluation.md.
"""

from __future__ import annotations

import json
import os
import re

from .answers import evalai_answer

# format -> (benchmark folder, whether LLaVA's path has a SPLIT level, whether the file is merge.jsonl)
LAYOUTS = {
    "vqav2": ("vqav2", True, True),
    "gqa": ("gqa", True, True),
    "textvqa": ("textvqa", False, False),
    "pope": ("pope", False, False),
    "vizwiz": ("vizwiz", False, False),
    "scienceqa": ("scienceqa", False, False),
    "mmbench": ("mmbench", True, False),
}


def _stem(path) -> str:
    return os.path.splitext(os.path.basename(os.fspath(path)))[0]


def llava_split(data: dict) -> str:
    """LLaVA's SPLIT name of a benchmark data spec (see the module docstring)."""
    fmt = data["format"]
    if fmt == "vqav2":
        stem = _stem(data.get("questions_jsonl") or data["questions_json"])
        if stem.startswith("llava_vqav2_"):  # LLaVA's own question file: its stem is SPLIT
            return stem
        m = re.search(r"mscoco_(.+?)_questions$", stem)
        return f"llava_vqav2_mscoco_{m.group(1)}" if m else stem
    if fmt == "gqa":
        stem = _stem(data["questions_jsonl_or_json"])
        return stem if stem.startswith("llava_") else "llava_gqa_" + stem.removesuffix("_questions")
    if fmt == "mmbench":
        return _stem(data["tsv"])
    raise ValueError(f"llava_split: LLaVA's layout has no split level for format {fmt!r}")


def _safe(name: str) -> str:
    """A model name as one path component (LLaVA's CKPT, e.g. llava-v1.5-13b)."""
    return re.sub(r"[\s/\\]+", "_", name.strip()).strip("_") or "model"


def _model(model_name: str, shots: int) -> str:
    """LLaVA's CKPT of a model name, ``_Kshot`` added for a K-shot run."""
    return _safe(model_name) + (f"_{int(shots)}shot" if shots else "")


def llava_answers_path(data, model_name: str, shots: int = 0) -> str | None:
    """The answer file's path relative to LLaVA's ``playground/data/eval``, or None where no
    LLaVA script reads one (embedded data, caption files, generic multiple choice)."""
    if not isinstance(data, dict) or data.get("format") not in LAYOUTS:
        return None
    folder, has_split, merge = LAYOUTS[data["format"]]
    model = _model(model_name, shots)
    parts = [folder, "answers"] + ([llava_split(data)] if has_split else [])
    parts += [model, "merge.jsonl"] if merge else [model + ".jsonl"]
    return os.path.join(*parts)


def write_llava_answers(predictions: list[dict], data, model_name: str, root: str,
                        shots: int = 0) -> str | None:
    """Write `predictions` (answer rows) at LLaVA's path under `root`; that path, or None
    where LLaVA has none for this data. Written to a temporary name and renamed."""
    relative = llava_answers_path(data, model_name, shots)
    if relative is None or not predictions:
        return None
    path = os.path.join(os.fspath(root), relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        f.writelines(json.dumps(row, default=str) + "\n" for row in predictions)
    os.replace(path + ".tmp", path)
    return path


def vizwiz_upload(predictions: list[dict], records: list[dict]) -> list[dict]:
    """The EvalAI upload LLaVA's ``convert_vizwiz_for_submission.py`` writes: for each question
    of `records` answered in `predictions` (matched by ``question_id``), in the question file's
    order, ``{"image": record["image_file"], "answer": evalai_answer(text)}``."""
    texts = {row["question_id"]: row["text"] for row in predictions}
    return [{"image": r["image_file"], "answer": evalai_answer(texts[r["question_id"]])}
            for r in records if r["question_id"] in texts]


def llava_upload_path(data, model_name: str, shots: int = 0) -> str | None:
    """The upload file's path relative to ``playground/data/eval`` (VizWiz only), else None."""
    if not isinstance(data, dict) or data.get("format") != "vizwiz":
        return None
    return os.path.join("vizwiz", "answers_upload", _model(model_name, shots) + ".json")


def write_llava_upload(predictions: list[dict], data, model_name: str, root: str, shots: int = 0) -> str | None:
    """Write the `vizwiz_upload` of `predictions` at LLaVA's path under `root` (the question
    file read again, images unchecked, as the script reads it); that path, or None where LLaVA
    writes no upload for this data."""
    relative = llava_upload_path(data, model_name, shots)
    if relative is None or not predictions:
        return None
    from .datasets import load_task

    spec = {k: v for k, v in data.items() if k != "format"}
    records = load_task(data["format"], **{**spec, "check_images": False})
    path = os.path.join(os.fspath(root), relative)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path + ".tmp", "w") as f:
        json.dump(vizwiz_upload(predictions, records), f)  # json.dump's separators, as the script's
    os.replace(path + ".tmp", path)
    return path
