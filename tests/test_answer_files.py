"""Answer files in both directions: ours read by LLaVA's scripts as they read theirs, and
theirs re-scored by ours (`mir_jax.evals.rescore`, `evaluate.py --score_answers`).

LLaVA's parsing steps are re-implemented here from the scripts (haotian-liu/LLaVA):
convert_vqav2_for_submission.py ({question_id: text} looked up with the question file's ids),
eval_pope.py (the question file's {question_id: question}[answer's question_id]["category"]),
eval_textvqa.py (annotations keyed (image_id, question.lower()), looked up with
(answer's question_id, prompt_processor(answer's prompt))), convert_gqa_for_eval.py + GQA's
eval.py ({questionId: prediction}[every GQA question id]). Expected scores are hand-computed.
LLaVA's answers/ layout (scripts/v1_5/eval/*.sh): vqav2/gqa answers/SPLIT/CKPT/merge.jsonl,
pope/textvqa answers/CKPT.jsonl, under playground/data/eval.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
from flax import nnx
from PIL import Image

from mir_jax.data import ByteTokenizer, ImageConfig
from mir_jax.data.errors import DataError
from mir_jax.evals import EvalModel, get_evaluator, write_result
from mir_jax.evals.datasets import load_pope
from mir_jax.evals.llava_answers import llava_answers_path, write_llava_answers
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
    vqa_q = _json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {"data_subtype": "val2014", "questions": [
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


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_tiny_models_answer_files_parse_as_llavas_scripts_parse_them(tmp_path):
    files = benchmark_files(tmp_path)
    model = EvalModel("tiny", train_fixtures_model(), ByteTokenizer(), ImageConfig(size=32), "vicuna_v1")
    out = tmp_path / "out"
    rows = {}
    llava_dir = tmp_path / "playground" / "data" / "eval"
    llava_paths = {}
    for key, (name, data) in {"vqa": ("vqa", files["vqa"]), "pope": ("pope", files["pope"]),
                              "textvqa": ("vqa", files["textvqa"]), "gqa": ("vqa", files["gqa"])}.items():
        result = get_evaluator(name, data=data, max_new_tokens=3, batch_size=2).run(model)
        result.evaluator = key
        scores_path, answers_path = write_result(result, str(out))
        llava_paths[key] = write_llava_answers(result.predictions, data, "tiny", str(llava_dir))
        assert open(llava_paths[key]).read() == open(answers_path).read()  # the same answer file
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

    # LLaVA's layout: each script's own path under playground/data/eval. vqav2.sh:
    # convert_vqav2_for_submission.py --dir DIR/vqav2 --split SPLIT --ckpt CKPT opens
    # DIR/vqav2/answers/SPLIT/CKPT/merge.jsonl (SPLIT: llava_vqav2_mscoco_ + the VQA subtype).
    src = os.path.join(llava_dir, "vqav2", "answers", "llava_vqav2_mscoco_val2014", "tiny", "merge.jsonl")
    assert llava_paths["vqa"] == src
    assert {x["question_id"]: x["text"] for x in map(json.loads, open(src))} == results
    # gqa.sh: convert_gqa_for_eval.py --src DIR/gqa/answers/llava_gqa_testdev_balanced/CKPT/merge.jsonl
    src = os.path.join(llava_dir, "gqa", "answers", "llava_gqa_testdev_balanced", "tiny", "merge.jsonl")
    assert llava_paths["gqa"] == src
    assert [{"questionId": x["question_id"], "prediction": x["text"].rstrip(".").lower()}
            for x in map(json.loads, open(src))] == [
        {"questionId": q, "prediction": predictions[q]} for q in ("201", "202")]
    # pope.sh / textvqa.sh: --result-file DIR/pope/answers/CKPT.jsonl, DIR/textvqa/answers/CKPT.jsonl.
    assert llava_paths["pope"] == os.path.join(llava_dir, "pope", "answers", "tiny.jsonl")
    assert [x["question_id"] for x in map(json.loads, open(llava_paths["pope"]))] == [1, 2]
    assert llava_paths["textvqa"] == os.path.join(llava_dir, "textvqa", "answers", "tiny.jsonl")
    assert [(x["question_id"], _prompt_processor(x["prompt"])) for x in map(json.loads, open(llava_paths["textvqa"]))] == keys


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


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
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


def test_llava_answers_paths_for_each_benchmark():
    # The paths scripts/v1_5/eval/*.sh give --answers-file, relative to playground/data/eval.
    j = os.path.join
    assert llava_answers_path({"format": "vqav2", "questions_json": "/d/v2_OpenEnded_mscoco_test-dev2015_questions.json"},
                              "llava-v1.5-13b") == j("vqav2", "answers", "llava_vqav2_mscoco_test-dev2015",
                                                     "llava-v1.5-13b", "merge.jsonl")
    for gqa_file in ("/d/llava_gqa_testdev_balanced.jsonl", "/d/testdev_balanced_questions.json"):
        assert llava_answers_path({"format": "gqa", "questions_jsonl_or_json": gqa_file}, "m") == j(
            "gqa", "answers", "llava_gqa_testdev_balanced", "m", "merge.jsonl")
    for fmt in ("textvqa", "pope", "vizwiz", "scienceqa"):
        assert llava_answers_path({"format": fmt}, "llava-v1.5-13b") == j(fmt, "answers", "llava-v1.5-13b.jsonl")
    assert llava_answers_path({"format": "mmbench", "tsv": "/d/mmbench_dev_20230712.tsv"}, "m") == j(
        "mmbench", "answers", "mmbench_dev_20230712", "m.jsonl")
    assert llava_answers_path({"format": "pope"}, "/ckpt/run a", shots=4) == j("pope", "answers", "ckpt_run_a_4shot.jsonl")
    for data in ("embedded", {"format": "karpathy"}, {"format": "mc_jsonl"}):
        assert llava_answers_path(data, "m") is None


def pope_llava_files(tmp_path):
    """POPE label files (coco/) and a llava_pope_test.jsonl mixing their categories, plus one
    category (popular) without a label file."""
    coco = tmp_path / "coco"
    coco.mkdir()
    _lines(coco / "coco_pope_adversarial.json", [
        {"question_id": 1, "image": "A.jpg", "text": "Is there a dog in the image?", "label": "yes"},
        {"question_id": 2, "image": "B.jpg", "text": "Is there a cat in the image?", "label": "no"}])
    _lines(coco / "coco_pope_random.json", [
        {"question_id": 1, "image": "C.jpg", "text": "Is there a car in the image?", "label": "no"},
        {"question_id": 2, "image": "D.jpg", "text": "Is there a cup in the image?", "label": "yes"}])
    questions = _lines(tmp_path / "llava_pope_test.jsonl", [
        {"question_id": 1, "image": "A.jpg", "text": f"Is there a dog in the image?\n{SHORT}", "category": "adversarial"},
        {"question_id": 2, "image": "C.jpg", "text": f"Is there a car in the image?\n{SHORT}", "category": "random"},
        {"question_id": 3, "image": "E.jpg", "text": f"Is there a bus in the image?\n{SHORT}", "category": "popular"},
        {"question_id": 4, "image": "B.jpg", "text": f"Is there a cat in the image?\n{SHORT}", "category": "adversarial"},
        {"question_id": 5, "image": "D.jpg", "text": f"Is there a cup in the image?\n{SHORT}", "category": "random"}])
    return questions, str(coco)


def _eval_pope(questions_path, annotation_dir, answers):
    """eval_pope.py's main, re-implemented: per label file, the answers whose question (looked
    up by question_id) has its category, parsed, zipped in order with the file's labels."""
    questions = {q["question_id"]: q for q in map(json.loads, open(questions_path))}
    out = {}
    for name in os.listdir(annotation_dir):
        category = name[10:-5]
        cur = [a for a in answers if questions[a["question_id"]]["category"] == category]
        labels = [json.loads(line)["label"] for line in open(os.path.join(annotation_dir, name))]
        preds = []
        for a in cur:
            text = a["text"].split(".")[0] if "." in a["text"] else a["text"]
            words = text.replace(",", "").split(" ")
            preds.append(0 if ("No" in words or "not" in words or "no" in words) else 1)
        pairs = list(zip(preds, [0 if lab == "no" else 1 for lab in labels]))
        tp = sum(p == 1 and y == 1 for p, y in pairs)
        fp = sum(p == 1 and y == 0 for p, y in pairs)
        tn = sum(p == 0 and y == 0 for p, y in pairs)
        out[category] = {"accuracy": (tp + tn) / len(pairs), "yes_ratio": preds.count(1) / len(preds),
                         "tp": tp, "fp": fp}
    return out


def test_pope_llava_question_file_pairs_labels_as_eval_pope(tmp_path):
    questions, coco = pope_llava_files(tmp_path)
    records = load_pope(questions, check_images=False, annotation_dir=coco)
    # Ids stay ints; popular (no coco_pope_popular.json) is left out; the k-th question of a
    # category takes the k-th label of its file: adversarial 1 -> yes, 4 -> no; random 2 -> no, 5 -> yes.
    assert [(r["question_id"], r["category"], r["label"]) for r in records] == [
        (1, "adversarial", "yes"), (2, "random", "no"), (4, "adversarial", "no"), (5, "random", "yes")]
    assert records[0]["prompt"] == f"Is there a dog in the image?\n{SHORT}"
    # A LLaVA answer file for them, scored per category. adversarial: #1 "Yes" (yes): TP, #4
    # "Yes, it is." (no): FP -> accuracy 1/2, precision 1/2, recall 1, yes ratio 1. random: #2 "No"
    # (no): TN, #5 "There is no cup." (yes; "no" is a word): FN -> accuracy 1/2, yes ratio 0.
    answers = [{"question_id": 1, "text": "Yes"}, {"question_id": 2, "text": "No"},
               {"question_id": 4, "text": "Yes, it is."}, {"question_id": 5, "text": "There is no cup."}]
    path = _lines(tmp_path / "llava-v1.5-13b.jsonl", answers)
    data = {"format": "pope", "jsonl": questions, "annotation_dir": coco}
    per = rescore(path, "pope", data).details["per_category"]
    assert (per["adversarial"]["accuracy"], per["adversarial"]["precision"], per["adversarial"]["recall"],
            per["adversarial"]["yes_ratio"]) == (0.5, 0.5, 1.0, 1.0)
    assert (per["random"]["accuracy"], per["random"]["recall"], per["random"]["yes_ratio"]) == (0.5, 0.0, 0.0)
    # eval_pope.py's own pairing gives the same per-category numbers.
    official = _eval_pope(questions, coco, [dict(a) for a in answers])
    assert set(per) == set(official) == {"adversarial", "random"}
    for c in official:
        assert per[c]["accuracy"] == official[c]["accuracy"] and per[c]["yes_ratio"] == official[c]["yes_ratio"]
    assert load_pope(questions, check_images=False, annotation_dir=coco, limit=2)[-1]["question_id"] == 2


def test_pope_llava_question_file_errors(tmp_path):
    questions, coco = pope_llava_files(tmp_path)
    with pytest.raises(DataError, match="pass annotation_dir="):
        load_pope(questions, check_images=False)
    # A label file whose order does not match the questions': refused, not silently misscored.
    _lines(tmp_path / "coco" / "coco_pope_random.json", [
        {"question_id": 1, "image": "D.jpg", "text": "Is there a cup?", "label": "yes"},
        {"question_id": 2, "image": "C.jpg", "text": "Is there a car?", "label": "no"}])
    with pytest.raises(DataError, match="is for image 'C.jpg' but .*coco_pope_random.json:1 is for 'D.jpg'"):
        load_pope(questions, check_images=False, annotation_dir=coco)
    # More questions of a category than its file has labels.
    _lines(tmp_path / "coco" / "coco_pope_random.json", [
        {"question_id": 1, "image": "C.jpg", "text": "Is there a car?", "label": "no"}])
    with pytest.raises(DataError, match="question 2 of category 'random', but coco_pope_random.json has 1 labels"):
        load_pope(questions, check_images=False, annotation_dir=coco)
    (tmp_path / "coco" / "notes.txt").write_text("x")  # eval_pope.py asserts every file is coco_pope_*.json
    with pytest.raises(DataError, match="'notes.txt' is not a coco_pope_<category>.json"):
        load_pope(questions, check_images=False, annotation_dir=coco)


@pytest.mark.slow
def test_evaluate_llava_answers_dir_cli(tmp_path):
    """evaluate.py --llava_answers_dir on a tiny HF LLaVA: VizWiz's test split (LLaVA's
    llava_test.jsonl alone: predictions only) and POPE (llava_pope_test.jsonl + coco/ labels)
    answer files land where vizwiz.sh and pope.sh put them, with the question files' int ids,
    and VizWiz's EvalAI upload where convert_vizwiz_for_submission.py writes it."""
    pytest.importorskip("transformers")
    from mir_jax.evals.answers import evalai_answer
    from tests.test_vizwiz import SUFFIX
    from tests.torch_init import save_random_llava, tiny_llava_config

    model_dir = str(tmp_path / "tiny-llava")
    save_random_llava(tiny_llava_config(ByteTokenizer(), 28, 7), 0, model_dir)
    vizwiz_questions = _lines(tmp_path / "llava_test.jsonl", [
        {"question_id": 7, "image": "VizWiz_test_00000001.jpg", "text": "What color is this shirt?" + SUFFIX},
        {"question_id": 3, "image": "VizWiz_test_00000000.jpg", "text": "What is this?" + SUFFIX}])
    pope_questions, coco = pope_llava_files(tmp_path)
    for name in ("VizWiz_test_00000000.jpg", "VizWiz_test_00000001.jpg", "A.jpg", "B.jpg", "C.jpg", "D.jpg"):
        _png(tmp_path / name)
    llava_dir = tmp_path / "eval"
    run = run_tool("evaluate.py", f"--hf_model={model_dir}", "--evals=vqa,pope", "--num_samples=2",
                   "--max_new_tokens=2", "--batch_size=2", "--noprogress", f"--output_dir={tmp_path / 'out'}",
                   f"--vqa_data=vizwiz:questions_jsonl={vizwiz_questions}",
                   f"--pope_data=pope:jsonl={pope_questions},annotation_dir={coco}",
                   f"--llava_answers_dir={llava_dir}", cwd=ROOT)
    assert run.returncode == 0, run.stderr[-3000:]
    vizwiz = [json.loads(line) for line in open(tmp_path / "out" / "vqa_predictions.jsonl")]
    model = vizwiz[0]["model_id"]
    assert "accuracy" not in json.load(open(tmp_path / "out" / "vqa_scores.json"))["scores"]  # no answers
    # vizwiz.sh: --answers-file .../vizwiz/answers/CKPT.jsonl, which convert_vizwiz_for_submission.py
    # reads as {question_id: text} and looks up with the question file's ids (it asserts each is there).
    rows = [json.loads(line) for line in open(llava_dir / "vizwiz" / "answers" / f"{model}.jsonl")]
    assert rows == vizwiz
    results = {x["question_id"]: x["text"] for x in rows}
    questions = list(map(json.loads, open(vizwiz_questions)))
    assert all(q["question_id"] in results for q in questions)
    # ... and writes --result-upload-file .../vizwiz/answers_upload/CKPT.json: the question file's
    # images in its order, each answer through EvalAIAnswerProcessor (whose rules test_llava_scripts checks).
    upload = json.load(open(llava_dir / "vizwiz" / "answers_upload" / f"{model}.json"))
    assert upload == [{"image": q["image"], "answer": evalai_answer(results[q["question_id"]])} for q in questions]
    # pope.sh: .../pope/answers/CKPT.jsonl; eval_pope.py finds each answer's category by its id.
    rows = [json.loads(line) for line in open(llava_dir / "pope" / "answers" / f"{model}.jsonl")]
    questions = {q["question_id"]: q for q in map(json.loads, open(pope_questions))}
    assert [r["question_id"] for r in rows] == [1, 2]
    assert [questions[r["question_id"]]["category"] for r in rows] == ["adversarial", "random"]
    assert "LLaVA answer files: " in run.stdout and str(llava_dir / "pope" / "answers") in run.stdout
    flags = json.load(open(tmp_path / "out" / "evals.json"))["flags"]
    assert flags["llava_answers_dir"] == str(llava_dir)
