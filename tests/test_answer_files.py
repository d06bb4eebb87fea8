"""Answer files in both directions: ours read by LLaVA's scripts as they read theirs, and
theirs re-scored by ours (`mir_jax.evals.rescore`, `evaluate.py --score_answers`).

LLaVA's parsing steps are re-implemented here from the scripts (haotian-liu/LLaVA):
convert_vqav2_for_submission.py ({question_id: text} looked up with the question file's ids),
eval_pope.py (the question file's {question_id: question}[answer's question_id]["category"]),
eval_textvqa.py (annotations keyed (image_id, question.lower()), looked up with
(answer's question_id, prompt_processor(answer's prompt))), convert_gqa_for_eval.py + GQA's
eval.py ({questionId: prediction}[every GQA question id]). Expected scores are hand-computed.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from mir_jax.data import ByteTokenizer, ImageConfig
from mir_jax.evals import EvalModel, get_evaluator, write_result
from mir_jax.evals.rescore import read_answers, rescore
from tests import train_fixtures
from tests.helpers import run_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHORT = "Answer the question using a single word or phrase."


def _png(path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (8, 6), (200, 30, 30)).save(path, format="PNG")
    return str(path)


def _json(path, obj):
    path.write_text(json.dumps(obj))
    return str(path)


def _lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def benchmark_files(tmp_path):
    """Tiny VQAv2, POPE, TextVQA (LLaVA's file: image ids as question ids) and GQA files."""
    for name in ("COCO_val2014_000000000042.jpg", "COCO_val2014_000000000007.jpg", "abc.jpg", "n1.jpg", "n2.jpg"):
        _png(tmp_path / "img" / name)
    vqa_q = _json(tmp_path / "q.json", {"data_subtype": "val2014", "questions": [
        {"image_id": 42, "question": "What color is it?", "question_id": 42000},
        {"image_id": 7, "question": "How many?", "question_id": 7001}]})
    vqa_a = _json(tmp_path / "a.json", {"annotations": [
        {"question_id": 42000, "answer_type": "other",
         "answers": [{"answer": a, "answer_id": k + 1} for k, a in enumerate(["red"] * 3 + ["pink"] * 7)]},
        {"question_id": 7001, "answer_type": "number",
         "answers": [{"answer": "2", "answer_id": k + 1} for k in range(10)]}]})
    pope = _lines(tmp_path / "coco_pope_random.json", [
        {"question_id": 1, "image": "COCO_val2014_000000000042.jpg", "text": "Is there a dog in the image?", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000000007.jpg", "text": "Is there a cat in the image?", "label": "no"}])
    tv_q = _lines(tmp_path / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "abc", "image": "abc.jpg", "text": f"What brand?\nReference OCR token: NIKON, D5\n{SHORT}"},
        {"question_id": "abc", "image": "abc.jpg", "text": f"What model?\n{SHORT}"}])
    tv_a = _json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [
        {"question_id": 11, "image_id": "abc", "question": "what brand?", "answers": ["nikon"] * 10},
        {"question_id": 12, "image_id": "abc", "question": "what model?", "answers": ["d5"] * 2 + ["d50"] * 8}]})
    gqa_q = _lines(tmp_path / "llava_gqa_testdev_balanced.jsonl", [
        {"question_id": "201", "image": "n1.jpg", "text": f"Is it overcast?\n{SHORT}"},
        {"question_id": "202", "image": "n2.jpg", "text": f"What animal is it?\n{SHORT}"}])
    gqa_a = _json(tmp_path / "testdev_balanced_questions.json", {
        "201": {"question": "Is it overcast?", "imageId": "n1", "answer": "no", "isBalanced": True},
        "202": {"question": "What animal is it?", "imageId": "n2", "answer": "dog", "isBalanced": True}})
    img = str(tmp_path / "img")
    return {
        "vqa": {"format": "vqav2", "questions_json": vqa_q, "annotations_json": vqa_a, "image_folder": img},
        "pope": {"format": "pope", "jsonl": pope, "image_folder": img},
        "textvqa": {"format": "textvqa", "questions_jsonl": tv_q, "annotations_json": tv_a, "image_folder": img},
        "gqa": {"format": "gqa", "questions_jsonl_or_json": gqa_q, "answers_json": gqa_a, "image_folder": img},
    }


def _prompt_processor(prompt):
    """eval_textvqa.py's rule: the question line of a 3-line OCR prompt or a 2-line prompt,
    lowercased; anything else is an assertion error there."""
    lines = prompt.split("\n")
    if "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise AssertionError(f"eval_textvqa.py cannot read the prompt {prompt!r}")
    return question.lower()


def test_tiny_models_answer_files_parse_as_llavas_scripts_parse_them(tmp_path):
    files = benchmark_files(tmp_path)
    model = EvalModel("tiny", train_fixtures_model(), ByteTokenizer(), ImageConfig(size=32), "vicuna_v1")
    out = tmp_path / "out"
    rows = {}
    for key, (name, data) in {"vqa": ("vqa", files["vqa"]), "pope": ("pope", files["pope"]),
                              "textvqa": ("vqa", files["textvqa"]), "gqa": ("vqa", files["gqa"])}.items():
        result = get_evaluator(name, data=data, max_new_tokens=3, batch_size=2).run(model)
        result.evaluator = key
        scores_path, answers_path = write_result(result, str(out))
        assert json.load(open(scores_path))["scorer"]  # names the scorer its numbers equal
        text = open(answers_path).read()
        rows[key] = [json.loads(line) for line in text.splitlines()]  # one JSON object a line
        assert len(rows[key]) == 2 and text.endswith("\n")
        for r in rows[key]:
            assert {"question_id", "prompt", "text", "answer_id", "model_id", "metadata"} <= set(r)
            assert "rendered_prompt" in r["metadata"] and "ASSISTANT:" in r["metadata"]["rendered_prompt"]

    # VQAv2: ints stay ints; convert_vqav2_for_submission.py finds every question's answer.
    assert [r["question_id"] for r in rows["vqa"]] == [42000, 7001]
    results = {x["question_id"]: x["text"] for x in rows["vqa"]}
    questions = json.load(open(files["vqa"]["questions_json"]))["questions"]
    assert all(q["question_id"] in results for q in questions)
    assert rows["vqa"][0]["prompt"] == f"What color is it?\n{SHORT}"

    # POPE: eval_pope.py looks each answer's category up in the question file by question_id.
    pope_questions = {q["question_id"]: q for q in map(json.loads, open(files["pope"]["jsonl"]))}
    assert [r["question_id"] for r in rows["pope"]] == [1, 2]
    assert all(r["question_id"] in pope_questions for r in rows["pope"])
    assert rows["pope"][0]["prompt"] == f"Is there a dog in the image?\n{SHORT}"

    # TextVQA: eval_textvqa.py's (image id, question) key finds each annotation.
    annotations = {(a["image_id"], a["question"].lower()): a
                   for a in json.load(open(files["textvqa"]["annotations_json"]))["data"]}
    keys = [(r["question_id"], _prompt_processor(r["prompt"])) for r in rows["textvqa"]]
    assert keys == [("abc", "what brand?"), ("abc", "what model?")]
    assert all(k in annotations for k in keys)
    assert rows["textvqa"][0]["prompt"] == f"What brand?\nReference OCR token: NIKON, D5\n{SHORT}"

    # GQA: convert_gqa_for_eval.py's predictions cover every GQA question id (str keys).
    predictions = {x["question_id"]: x["text"].rstrip(".").lower() for x in rows["gqa"]}
    assert all(qid in predictions for qid in json.load(open(files["gqa"]["answers_json"])))


def train_fixtures_model():
    from mir_jax.models import LlavaModel

    cfg = train_fixtures.tiny_model_config()
    return LlavaModel(cfg, rngs=nnx.Rngs(0))


def test_rescore_llava_answer_files_hand_computed(tmp_path):
    files = benchmark_files(tmp_path)
    # VQAv2, LLaVA's answer file (int ids). 42000: "Red" against 3 x red + 7 x pink (not
    # unanimous: normalized, 3 matches): (3 * 2/3 + 7 * 1) / 10 = 0.9. 7001: "Two" against ten
    # "2": unanimous, unnormalized: 0 (vqaEval.py); normalized (lmms-eval) and EvalAI-processed
    # (LLaVA): "2" = "2": 1. Means: 0.45 official, 0.95 the others.
    vqa = _lines(tmp_path / "merge.jsonl", [
        {"question_id": 7001, "prompt": f"How many?\n{SHORT}", "text": "Two", "answer_id": "x", "model_id": "m", "metadata": {}},
        {"question_id": 42000, "prompt": f"What color is it?\n{SHORT}", "text": "Red", "answer_id": "y", "model_id": "m", "metadata": {}}])
    res = rescore(vqa, "vqa", files["vqa"])
    assert res.scores["accuracy"] == pytest.approx(0.45)
    assert res.scores["accuracy_lmms_eval"] == pytest.approx(0.95)
    assert res.scores["accuracy_llava"] == pytest.approx(0.95)
    assert res.details["missing"] == res.details["unmatched"] == 0

    # TextVQA: both lines carry the image id "abc"; the prompt's question tells them apart.
    # "Nikon." -> "nikon": 10 matches: 1. "D5" -> "d5": 2 matches: (2 * 1/3 + 8 * 2/3) / 10 = 0.6.
    tv = _lines(tmp_path / "textvqa.jsonl", [
        {"question_id": "abc", "prompt": f"What model?\n{SHORT}", "text": "D5"},
        {"question_id": "abc", "prompt": f"What brand?\nReference OCR token: NIKON, D5\n{SHORT}", "text": "Nikon."}])
    assert rescore(tv, "vqa", files["textvqa"]).scores["accuracy"] == pytest.approx((1 + 0.6) / 2)

    # GQA, as GQA's predictions JSON: "No." -> "no" = "no": 1; "a dog" != "dog": 0.
    gqa = _json(tmp_path / "testdev_balanced_predictions.json",
                [{"questionId": "201", "prediction": "No."}, {"questionId": "202", "prediction": "a dog"}])
    assert rescore(gqa, "vqa", files["gqa"]).scores["accuracy"] == pytest.approx(0.5)

    # POPE, lmms-eval's samples: "Yes" (label yes: TP), "NO" (label no, parsed yes: FP):
    # accuracy 1/2, precision 1/2, recall 1/1, yes ratio 1.
    pope = _lines(tmp_path / "pope_samples.jsonl", [
        {"doc_id": 0, "doc": {"question_id": 1}, "filtered_resps": ["Yes"]},
        {"doc_id": 1, "doc": {"question_id": 2}, "filtered_resps": ["NO"]}])
    s = rescore(pope, "pope", files["pope"]).scores
    assert (s["accuracy"], s["precision"], s["recall"], s["yes_ratio"]) == (0.5, 0.5, 1.0, 1.0)

    # A missing answer is the empty answer (convert_vqav2_for_submission.py's ''), counted.
    one = _lines(tmp_path / "one.jsonl", [{"question_id": 42000, "text": "red"}, {"question_id": 5, "text": "x"}])
    res = rescore(one, "vqa", files["vqa"])
    assert res.scores["accuracy"] == pytest.approx(0.9 / 2)
    assert (res.details["missing"], res.details["unmatched"]) == (1, 1)
    assert read_answers(one)[0] == (42000, None, "red")


def test_evaluate_score_answers_cli(tmp_path):
    files = benchmark_files(tmp_path)
    vqa = _lines(tmp_path / "merge.jsonl", [
        {"question_id": 7001, "prompt": "How many?", "text": "2"},          # unanimous "2": 1
        {"question_id": 42000, "prompt": "What color?", "text": "pink"}])   # 7 of 10: 1
    spec = files["vqa"]
    out = tmp_path / "rescored"
    run = run_tool("evaluate.py", f"--score_answers={vqa}",
                   f"--vqa_data=vqav2:questions_json={spec['questions_json']},"
                   f"annotations_json={spec['annotations_json']}", f"--output_dir={out}", cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    scores = json.load(open(out / "vqa_scores.json"))
    assert scores["scores"]["accuracy"] == 1.0 and "vqaEval.py" in scores["scorer"]
    assert "accuracy 1" in run.stdout
    bad = run_tool("evaluate.py", f"--score_answers={vqa}", cwd=ROOT)
    assert bad.returncode == 2 and "needs exactly one of --vqa_data" in bad.stderr.strip().splitlines()[-1]
    assert np.isfinite(scores["scores"]["num_samples"])
