"""Re-score an existing answer file with our scorers, without a model.

    python evaluate.py --score_answers=answers/llava-v1.5-13b.jsonl \\
        --vqa_data=textvqa:questions_jsonl=llava_textvqa_val_v051_ocr.jsonl,annotations_json=TextVQA_0.5.1_val.json \\
        --output_dir=/tmp/rescored

Reads LLaVA's answer JSONL, lmms-eval's samples JSONL or a results JSON array, matched to the
data's records by question_id; missing answers score as empty (details["missing"]). Formats
and matching rules: docs/evaluation.md.
"""

from __future__ import annotations

import json
import os
import sys

from mir_jax.data.errors import DataError

from .base import EvalResult, get_evaluator, write_result
from .generative import load_records

TASKS = ("vqa", "pope", "multiple_choice", "caption")


def _question_of(prompt) -> str | None:
    """The question line of a LLaVA prompt, lowercased (eval_textvqa.py's prompt_processor)."""
    if not isinstance(prompt, str):
        return None
    from .datasets import _split_llava_text

    return _split_llava_text(prompt)[0].lower()


def read_answers(path: str) -> list[tuple[object, str | None, str]]:
    """(question_id, prompt or None, answer text) of each answer in the file, in file order."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    if data.lstrip().startswith("["):
        try:
            rows = json.loads(data)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from e
        wheres = [f"{path}: [{i}]" for i in range(len(rows))]
    else:
        rows, wheres = [], []
        for n, line in enumerate(data.splitlines(), start=1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise DataError(f"{path}:{n}: malformed JSON ({e.msg})") from e
                wheres.append(f"{path}:{n}")
    out = []
    for row, where in zip(rows, wheres):
        if not isinstance(row, dict):
            raise DataError(f"{where}: expected a JSON object")
        if "doc" in row:  # lmms-eval --log_samples
            doc = row["doc"] if isinstance(row["doc"], dict) else {}
            if "question_id" not in doc:
                raise DataError(f"{where}: lmms-eval sample without doc.question_id")
            resps = row.get("filtered_resps", row.get("resps"))
            while isinstance(resps, list) and resps:
                resps = resps[0]
            out.append((doc["question_id"], doc.get("question"), resps if isinstance(resps, str) else ""))
        elif "questionId" in row:  # GQA's predictions format
            out.append((row["questionId"], None, str(row.get("prediction", ""))))
        elif "question_id" in row and ("text" in row or "answer" in row):
            out.append((row["question_id"], row.get("prompt"), str(row.get("text", row.get("answer")))))
        else:
            raise DataError(f"{where}: not an answer: needs question_id and text (LLaVA), "
                            "question_id and answer, questionId and prediction (GQA), or doc (lmms-eval)")
    return out


def match(records: list[dict], answers: list[tuple]) -> tuple[list[str], int, int]:
    """(answer text per record, "" where none; #records without an answer; #unmatched answers)."""
    by_id, by_question = {}, {}
    for qid, prompt, text in answers:
        by_id.setdefault(str(qid), []).append(text)
        q = _question_of(prompt)
        if q is not None:
            by_question[(str(qid), q)] = text
    texts, missing, used = [], 0, 0
    for r in records:
        key = str(r["question_id"])
        if r.get("metric") == "textvqa" and (key, str(r.get("question", "")).lower()) in by_question:
            texts.append(by_question[(key, r["question"].lower())])
        elif key in by_id and len(by_id[key]) == 1:
            texts.append(by_id[key][0])
        else:
            texts.append("")
            missing += 1
            continue
        used += 1
    return texts, missing, len(answers) - used


def _without_image_checks(data):
    """The spec with check_images=False where the loader takes it: scoring reads no image."""
    import inspect

    from .datasets import LOADERS

    if not isinstance(data, dict) or data.get("format") not in LOADERS:
        return data
    takes = inspect.signature(LOADERS[data["format"]]).parameters
    return {**data, "check_images": False} if "check_images" in takes and "check_images" not in data else data


def rescore(answers_path: str, task: str, data, **options) -> EvalResult:
    """Our scores of an answer file against `data` (a `datasets.load_task` spec dict) for the
    evaluator `task` (one of TASKS)."""
    if task not in TASKS:
        raise ValueError(f"rescore: task {task!r} not in {TASKS}")
    evaluator = get_evaluator(task, data=data, **options)
    records = load_records(_without_image_checks(data), evaluator.task, None, 0)
    if not records:
        raise ValueError(f"rescore: the {task} data holds no records")
    if task == "vqa" and not any(r["answers"] for r in records):
        raise ValueError("rescore: the data has no answers (a test split: its benchmark's server scores it)")
    texts, missing, unmatched = match(records, read_answers(answers_path))
    details = {"answers_file": os.path.abspath(answers_path), "missing": missing, "unmatched": unmatched}
    if task == "multiple_choice":
        _, scores, details["scorer"] = evaluator.generation_scores(records, texts)
    else:
        scores, more = evaluator.score(records, texts)
        details.update(more)
        metrics = {r.get("metric") or "vqa" for r in records} if task == "vqa" else set()
        others = ("lmms_eval", "llava") if "vqa" in metrics else ("llava",) if "vizwiz" in metrics else ()
        for scoring in others:
            if scoring != evaluator.options["scoring"]:
                other = get_evaluator("vqa", data=data, **{**options, "scoring": scoring})
                scores[f"accuracy_{scoring}"] = other.score(records, texts)[0]["accuracy"]
    scores["num_samples"] = len(records)
    result = evaluator.result(scores, [], details)
    return result


def rescore_cli(answers_path: str, data_specs: dict, output_dir: str | None) -> int:
    """evaluate.py --score_answers: the one task whose data flag is not "embedded" is scored,
    the scores printed (and written as TASK_scores.json to output_dir). Returns the exit
    status (2 with a one-line error)."""
    given = {task: spec for task, spec in data_specs.items() if spec not in (None, "", "embedded")}
    if len(given) != 1:
        print("evaluate.py: error: --score_answers needs exactly one of --vqa_data, --pope_data, "
              f"--mc_data, --caption_data with a benchmark file (got {sorted(given) or 'none'})",
              file=sys.stderr)
        return 2
    ((task, spec),) = given.items()
    try:
        result = rescore(answers_path, task, spec)
    except (DataError, ValueError, KeyError) as e:
        print(f"evaluate.py: error: --score_answers: {e}", file=sys.stderr)
        return 2
    print(f"{task} ({result.details.get('scorer')}): " + ", ".join(
        f"{k} {v:.6g}" for k, v in result.scores.items()))
    print(f"missing answers: {result.details['missing']}, unmatched answers: {result.details['unmatched']}")
    if output_dir:
        path, _ = write_result(result, output_dir)
        print(f"wrote {path}")
    return 0
