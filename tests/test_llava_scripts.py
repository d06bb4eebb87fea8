"""LLaVA-1.5's question files read as benchmark data, and our answer and upload files read as
LLaVA's scripts read them (haotian-liu/LLaVA; the scripts' parsing re-implemented here from
reading them, not copied):

  convert_vqav2_for_submission.py  {question_id: text} of merge.jsonl, looked up with the ids of
                                   llava_vqav2_mscoco_test2015.jsonl; "" where none; the answer
                                   through EvalAIAnswerProcessor
  convert_vizwiz_for_submission.py the same with llava_test.jsonl (asserting every id is
                                   answered), written as [{"image", "answer"}]
  eval_science_qa.py               answers keyed by question_id, looked up with pid_splits'
                                   str pids; the letter: the whole text one of A-E, else "X. "
                                   at its start, else exactly one "The answer is X." match;
                                   IMG-Accuracy over the answers whose prompt holds "<image>"
  convert_mmbench_for_submission.py the TSV as pandas reads it (index an int column), six
                                   columns dropped, "prediction" inserted 7th, set on the rows
                                   whose index == the answer's question_id

Model outputs are fixed strings (generation is replaced), so every expected value is worked
out by hand in a comment. The POPE headline (mean over categories) is hand-computed too.
"""

from __future__ import annotations

import csv
import json
import os
import re

import pytest

from mir_jax.data.errors import DataError
from mir_jax.evals import generative, get_evaluator, write_result
from mir_jax.evals.datasets import load_task, load_vqav2
from mir_jax.evals.llava_answers import write_llava_answers, write_llava_upload
from mir_jax.evals.rescore import rescore
from mir_jax.evals.vqa import NO_ANSWERS
from tests.test_evals import _stub_model
from tests.test_evals_datasets import _mmbench_tsv, _png_base64

SHORT = "Answer the question using a single word or phrase."
VIZWIZ = "When the provided information is insufficient, respond with 'Unanswerable'."
CHOICE = "Answer with the option's letter from the given choices directly."


def _lines(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture
def answers_are(monkeypatch):
    """answers_are(texts): every generation from now on returns `texts`, in record order."""
    def set_texts(texts):
        monkeypatch.setattr(generative, "generate_texts", lambda model, prompts, **kw: list(texts[:len(prompts)]))
    return set_texts


def _model():
    return _stub_model("vicuna_v1")


# ----- VQAv2: LLaVA's question files ---------------------------------------------------------------

def test_vqav2_llava_question_file_with_annotations(tmp_path, answers_are):
    # llava_vqav2_mscoco_val2014.jsonl: LLaVA's layout (int ids, image names, text = question +
    # the short-answer line, category), here with the official annotations.
    questions = _lines(tmp_path / "llava_vqav2_mscoco_val2014.jsonl", [
        {"question_id": 7001, "image": "COCO_val2014_000000000007.jpg", "text": f"How many?\n{SHORT}",
         "category": "default"},
        {"question_id": 42000, "image": "COCO_val2014_000000000042.jpg", "text": f"What color is it?\n{SHORT}",
         "category": "default"}])
    annotations = tmp_path / "v2_mscoco_val2014_annotations.json"
    annotations.write_text(json.dumps({"annotations": [
        {"question_id": 42000, "answer_type": "other", "answers": [{"answer": a} for a in ["red"] * 3 + ["pink"] * 7]},
        {"question_id": 7001, "answer_type": "number", "answers": [{"answer": "2"}] * 10}]}))
    data = {"format": "vqav2", "questions_jsonl": questions, "annotations_json": str(annotations),
            "image_folder": str(tmp_path / "val2014"), "check_images": False}
    records = load_task("vqav2", **{k: v for k, v in data.items() if k != "format"})
    # The question file's order, int ids and text (verbatim as the prompt); answers by id.
    assert [r["question_id"] for r in records] == [7001, 42000]
    assert records[1]["prompt"] == f"What color is it?\n{SHORT}" and records[1]["question"] == "What color is it?"
    assert records[1]["image"] == str(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    assert (records[1]["answers"], records[1]["answer_type"]) == (["red"] * 3 + ["pink"] * 7, "other")
    answers_are(["2", "Red"])
    result = get_evaluator("vqa", data=data).run(_model())
    # 7001: "2" against ten "2" (unanimous, compared as given): 1. 42000: "Red" against 3 red +
    # 7 pink (normalized: "red", 3 matches): (3 * 2/3 + 7 * 1) / 10 = 0.9. Mean 0.95.
    assert result.scores["accuracy"] == pytest.approx(0.95)
    assert [p["question_id"] for p in result.predictions] == [7001, 42000]
    # LLaVA's SPLIT is the question file's stem.
    path = write_llava_answers(result.predictions, data, "tiny", str(tmp_path / "eval"))
    assert path == os.path.join(tmp_path, "eval", "vqav2", "answers", "llava_vqav2_mscoco_val2014", "tiny", "merge.jsonl")
    # One of the two question files, and a .jsonl passed as the VQA API's questions file, are refused.
    with pytest.raises(DataError, match="give questions_json .* or questions_jsonl"):
        load_vqav2(annotations_json=str(annotations))
    with pytest.raises(DataError, match="read as questions_jsonl="):
        load_vqav2(questions, str(annotations))
    missing = _lines(tmp_path / "llava_vqav2_mscoco_val2014_more.jsonl", [{"question_id": 5, "image": "x.jpg", "text": "Q?"}])
    with pytest.raises(DataError, match=r"question_id 5\).*no annotation for this question"):
        load_vqav2(questions_jsonl=missing, annotations_json=str(annotations), check_images=False)


def test_vqav2_test_dev_predictions_only_and_the_submission_script_reads_them(tmp_path, answers_are):
    test_dev = _lines(tmp_path / "llava_vqav2_mscoco_test-dev2015.jsonl", [
        {"question_id": 262144000, "image": "COCO_test2015_000000262144.jpg", "text": f"How many dogs?\n{SHORT}",
         "category": "default"},
        {"question_id": 262145000, "image": "COCO_test2015_000000262145.jpg", "text": f"Is it sunny?\n{SHORT}",
         "category": "default"}])
    # The test2015 list convert_vqav2_for_submission.py walks: test-dev's questions and one more.
    test2015 = _lines(tmp_path / "llava_vqav2_mscoco_test2015.jsonl", [
        {"question_id": 262144000}, {"question_id": 262144001}, {"question_id": 262145000}])
    data = {"format": "vqav2", "questions_jsonl": test_dev, "check_images": False}
    answers_are(["Two.", "Yes, it is"])
    result = get_evaluator("vqa", data=data).run(_model())
    # No answers: nothing scored, no accuracy, the scorer says why; the answers are written.
    assert "accuracy" not in result.scores and result.scores["num_samples"] == 2
    assert result.details["unscored"] == 2 and result.details["scorer"] == NO_ANSWERS
    scores_path, _ = write_result(result, str(tmp_path / "out"))
    assert json.load(open(scores_path))["scorer"] == NO_ANSWERS
    merge = write_llava_answers(result.predictions, data, "tiny", str(tmp_path / "eval"))
    assert merge == os.path.join(tmp_path, "eval", "vqav2", "answers", "llava_vqav2_mscoco_test-dev2015", "tiny",
                                 "merge.jsonl")
    # convert_vqav2_for_submission.py: {question_id: text}, looked up with test2015's int ids.
    results = {x["question_id"]: x["text"] for x in map(json.loads, open(merge))}
    # EvalAIAnswerProcessor by hand: "Two." -> "two." -> period deleted -> "two" -> "2";
    # "Yes, it is" -> commas deleted, lowercased: "yes it is" (no further change).
    processed = {"Two.": "2", "Yes, it is": "yes it is"}
    upload = [{"question_id": q["question_id"], "answer": processed[results[q["question_id"]]]
               if q["question_id"] in results else ""} for q in map(json.loads, open(test2015))]
    assert upload == [{"question_id": 262144000, "answer": "2"}, {"question_id": 262144001, "answer": ""},
                      {"question_id": 262145000, "answer": "yes it is"}]
    # Re-scoring needs answers; a few-shot example does too.
    with pytest.raises(ValueError, match="no answers"):
        rescore(merge, "vqa", data)
    with pytest.raises(ValueError, match="has no answers .* support_data="):
        get_evaluator("vqa", data=data, support_data=data, shots=1).run(_model())


# ----- VizWiz: the test split's upload -------------------------------------------------------------

def test_vizwiz_test_split_upload_is_what_convert_vizwiz_for_submission_writes(tmp_path, answers_are):
    llava_test = _lines(tmp_path / "llava_test.jsonl", [
        {"question_id": 0, "image": "VizWiz_test_00000000.jpg", "text": f"What is this?\n{VIZWIZ}\n{SHORT}",
         "category": "default"},
        {"question_id": 1, "image": "VizWiz_test_00000001.jpg", "text": f"What is in the can?\n{VIZWIZ}\n{SHORT}",
         "category": "default"}])
    data = {"format": "vizwiz", "questions_jsonl": llava_test, "image_folder": str(tmp_path / "test"),
            "check_images": False}
    answers_are(["Unanswerable.", "It's a can of Coke, 2 cans"])
    result = get_evaluator("vqa", data=data).run(_model())
    assert "accuracy" not in result.scores and result.details["unscored"] == 2
    assert "unanswerable_f1" not in result.details  # no answerable labels in the test split
    root = str(tmp_path / "eval")
    answers = write_llava_answers(result.predictions, data, "tiny", root)
    upload = write_llava_upload(result.predictions, data, "tiny", root)
    assert answers == os.path.join(root, "vizwiz", "answers", "tiny.jsonl")
    assert upload == os.path.join(root, "vizwiz", "answers_upload", "tiny.json")  # vizwiz.sh's path
    # convert_vizwiz_for_submission.py on our answer file: {question_id: text}, every question of
    # llava_test.jsonl answered (it asserts so), then [{"image": its image, "answer": processed}].
    results = {x["question_id"]: x["text"] for x in map(json.loads, open(answers))}
    # EvalAIAnswerProcessor by hand: "Unanswerable." -> "unanswerable." -> period deleted ->
    # "unanswerable". "It's a can of Coke, 2 cans" -> lowercased, comma deleted, "'s" -> " 's":
    # "it 's a can of coke 2 cans" -> article "a" dropped: "it 's can of coke 2 cans".
    processed = {"Unanswerable.": "unanswerable", "It's a can of Coke, 2 cans": "it 's can of coke 2 cans"}
    expected = []
    for x in map(json.loads, open(llava_test)):
        assert x["question_id"] in results
        expected.append({"image": x["image"], "answer": processed[results[x["question_id"]]]})
    assert json.load(open(upload)) == expected == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "unanswerable"},
        {"image": "VizWiz_test_00000001.jpg", "answer": "it 's can of coke 2 cans"}]
    # Other data gets no upload.
    assert write_llava_upload(result.predictions, {"format": "pope"}, "tiny", root) is None


# ----- ScienceQA: eval_science_qa.py ---------------------------------------------------------------

def _eval_science_qa(base_dir, result_file, split="test"):
    """eval_science_qa.py's scores of an answer file: (accuracy, IMG-Accuracy), fractions."""
    split_pids = json.load(open(os.path.join(base_dir, "pid_splits.json")))[split]
    problems = json.load(open(os.path.join(base_dir, "problems.json")))
    predictions = {p["question_id"]: p for p in map(json.loads, open(result_file))}
    letters = ["A", "B", "C", "D", "E"]
    correct, total, img_correct, img_total = 0, 0, 0, 0
    for pid in split_pids:
        prob = problems[pid]
        pred = predictions.get(pid, {"text": "FAILED", "prompt": "Unknown"})
        text = pred["text"]
        if text in letters:
            letter = text
        elif len(text) >= 3 and text[0] in letters and text[1:3] == ". ":
            letter = text[0]
        else:
            found = re.findall(r"The answer is ([A-Z]).", text)
            letter = found[0] if len(found) == 1 else "FAILED"
        index = letters.index(letter) if letter in letters[:len(prob["choices"])] else -1
        right = index == prob["answer"]
        correct, total = correct + right, total + 1
        if "<image>" in pred["prompt"]:
            img_correct, img_total = img_correct + right, img_total + 1
    return correct / total, img_correct / img_total


def test_scienceqa_answer_file_as_eval_science_qa_reads_it(tmp_path, answers_are):
    base = tmp_path / "scienceqa"
    base.mkdir()
    problems = {
        "5": {"question": "Which is it?", "choices": ["x", "y"], "answer": 1, "hint": "A hint.",
              "image": "image.png", "split": "test"},
        "9": {"question": "Which word?", "choices": ["p", "q", "r"], "answer": 0, "hint": "", "image": None,
              "split": "test"},
        "12": {"question": "Pick one.", "choices": ["a1", "a2", "a3", "a4", "a5"], "answer": 3, "hint": "",
               "image": "image.png", "split": "test"}}
    (base / "problems.json").write_text(json.dumps(problems))
    (base / "pid_splits.json").write_text(json.dumps({"test": ["5", "9", "12"]}))
    data = {"format": "scienceqa", "problems_json": str(base / "problems.json"),
            "pid_splits": str(base / "pid_splits.json"), "check_images": False}
    answers_are(["B", "The answer is A.", "E. a5"])
    result = get_evaluator("multiple_choice", data=data, mode="generate").run(_model())
    # 5: "B" -> B = answer 1: right (image). 9: one "The answer is A." -> A = 0: right (no
    # image). 12: "E. " -> E = 4, answer 3: wrong (image). Accuracy 2/3, IMG-Accuracy 1/2.
    assert result.scores["accuracy"] == pytest.approx(2 / 3) and result.scores["img_accuracy"] == 0.5
    rows = result.predictions
    assert [r["question_id"] for r in rows] == ["5", "9", "12"]  # problems.json's str pids
    # model_vqa_science.py's prompt: "<image>\n" first for a problem with an image.
    assert rows[0]["prompt"] == f"<image>\nContext: A hint.\nWhich is it?\nA. x\nB. y\n{CHOICE}"
    assert rows[1]["prompt"] == f"Which word?\nA. p\nB. q\nC. r\n{CHOICE}"
    assert rows[2]["prompt"].endswith("\nD. a4\nE. a5\n" + CHOICE)  # a fifth option, lettered E
    answers = write_llava_answers(rows, data, "tiny", str(tmp_path / "eval"))
    assert answers == os.path.join(tmp_path, "eval", "scienceqa", "answers", "tiny.jsonl")  # sqa.sh's
    assert _eval_science_qa(base, answers) == pytest.approx((2 / 3, 0.5))
    rescored = rescore(answers, "multiple_choice", data).scores
    assert (rescored["accuracy"], rescored["img_accuracy"]) == pytest.approx((2 / 3, 0.5))


# ----- MMBench: convert_mmbench_for_submission.py --------------------------------------------------

def _convert_mmbench(tsv, result_dir, experiment):
    """convert_mmbench_for_submission.py's table, minus the xlsx: (columns, rows). pandas reads an
    all-digit column as int64, and `df['index'] == pred['question_id']` is True only for an int."""
    with open(tsv, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f, delimiter="\t"))
    columns = list(rows[0])
    for dropped in ("hint", "category", "source", "image", "comment", "l2-category"):
        columns.remove(dropped)  # DataFrame.drop raises on a missing column
    columns.insert(6, "prediction")
    table = [{c: (int(r[c]) if c == "index" else r.get(c)) for c in columns} for r in rows]
    for line in open(os.path.join(result_dir, f"{experiment}.jsonl")):
        pred = json.loads(line)
        for row in table:
            if type(pred["question_id"]) is int and row["index"] == pred["question_id"]:
                row["prediction"] = pred["text"]
    return columns, table


def test_mmbench_answer_file_as_convert_mmbench_for_submission_reads_it(tmp_path, answers_are):
    red, _ = _png_base64((255, 0, 0))
    tsv = _mmbench_tsv(tmp_path / "mmbench_dev_20230712.tsv", [
        {"index": "101", "question": "What colour is it?", "hint": "Look closely.", "A": "blue", "B": "green",
         "C": "red", "answer": "C", "category": "attribute", "image": red, "source": "s", "comment": ""},
        {"index": "205", "question": "Which is it?", "hint": "nan", "A": "1", "B": "2", "C": "3", "D": "4",
         "answer": "A", "category": "counting", "image": red, "source": "s"}])
    data = {"format": "mmbench", "tsv": tsv}
    answers_are(["C", "B. 2"])
    result = get_evaluator("multiple_choice", data=data, mode="generate").run(_model())
    rows = result.predictions
    assert [r["question_id"] for r in rows] == [101, 205]  # ints: the TSV's index as pandas reads it
    # model_vqa_mmbench.py's question: the hint on its own line, then the question and options.
    assert rows[0]["prompt"] == f"Look closely.\nWhat colour is it?\nA. blue\nB. green\nC. red\n{CHOICE}"
    root = tmp_path / "eval"
    answers = write_llava_answers(rows, data, "tiny", str(root))
    result_dir = root / "mmbench" / "answers" / "mmbench_dev_20230712"  # mmbench.sh's --result-dir
    assert answers == str(result_dir / "tiny.jsonl")
    columns, table = _convert_mmbench(tsv, result_dir, "tiny")
    # The TSV's 14 columns less the six dropped, "prediction" seventh; every row predicted.
    assert columns == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert [(r["index"], r["prediction"]) for r in table] == [(101, "C"), (205, "B. 2")]


def test_mmbench_test_split_gives_an_answer_file_for_the_server_and_no_score(tmp_path, answers_are):
    red, _ = _png_base64((255, 0, 0))
    # MMBench's test TSV: every column of the dev file but 'answer'.
    tsv = _mmbench_tsv(tmp_path / "mmbench_test_en_20231003.tsv", [
        {"index": "7", "question": "What colour is it?", "hint": "nan", "A": "blue", "B": "red",
         "category": "attribute", "image": red, "source": "s", "l2-category": "x", "comment": "", "split": "test"},
        {"index": "9", "question": "Which is it?", "hint": "A hint.", "A": "1", "B": "2", "C": "3",
         "category": "counting", "image": red, "source": "s", "l2-category": "x", "comment": "", "split": "test"}],
        columns=("index", "question", "hint", "A", "B", "C", "D", "image", "source", "l2-category",
                 "comment", "split", "category"))
    data = {"format": "mmbench", "tsv": tsv}
    answers_are(["B", "the third"])
    result = get_evaluator("multiple_choice", data=data, mode="generate").run(_model())
    # Nothing to score against: no accuracy, both questions counted as unscored, the one
    # generation no letter can be read from counted as unparsed.
    assert result.scores == {"num_samples": 2, "unparsed": 1}
    assert result.details["unscored"] == 2
    root = tmp_path / "eval"
    answers = write_llava_answers(result.predictions, data, "tiny", str(root))
    result_dir = root / "mmbench" / "answers" / "mmbench_test_en_20231003"
    assert answers == str(result_dir / "tiny.jsonl")
    columns, table = _convert_mmbench(tsv, result_dir, "tiny")
    assert columns == ["index", "question", "A", "B", "C", "D", "prediction", "split"]
    assert [(r["index"], r["prediction"]) for r in table] == [(7, "B"), (9, "the third")]


# ----- POPE: the headline ------------------------------------------------------------------------

def test_pope_headline_is_the_mean_over_categories_of_eval_popes_scores():
    labels = {"random": ["yes", "no"], "popular": ["yes", "no"], "adversarial": ["yes", "yes", "no", "no"]}
    said = {"random": ["Yes", "No"], "popular": ["Yes", "Yes"], "adversarial": ["No", "Yes", "Yes", "No"]}
    records = [{"label": lab, "category": c} for c in labels for lab in labels[c]]
    answers = [a for c in labels for a in said[c]]
    scores, details = get_evaluator("pope").score(records, answers)
    # Per category (eval_pope.py), positives "yes":
    #   random      TP 1, TN 1:             acc 1,   P 1,   R 1,   F1 1,   yes 1/2
    #   popular     TP 1, FP 1:             acc 1/2, P 1/2, R 1,   F1 2/3, yes 1
    #   adversarial TP 1, FN 1, FP 1, TN 1: acc 1/2, P 1/2, R 1/2, F1 1/2, yes 1/2
    assert details["per_category"]["popular"]["f1"] == pytest.approx(2 / 3)
    # Headline: the mean of the three (LLaVA-1.5's POPE is the mean F1): acc 2/3, P 2/3,
    # R 5/6, F1 (1 + 2/3 + 1/2) / 3 = 13/18, yes 2/3.
    assert [scores[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == pytest.approx(
        [2 / 3, 2 / 3, 5 / 6, 13 / 18, 2 / 3])
    # Pooled (TP 3, FP 2, TN 2, FN 1 of 8): acc 5/8, P 3/5, R 3/4, F1 2*(3/5)(3/4)/(27/20) = 2/3.
    pooled = details["pooled"]
    assert [pooled[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == pytest.approx(
        [5 / 8, 3 / 5, 3 / 4, 2 / 3, 5 / 8])
    assert "averaged over categories" in details["scorer"] and "mean F1" in details["headline"]
    # One category: the mean is that category's score.
    one, _ = get_evaluator("pope").score(records[:2], answers[:2])
    assert one["f1"] == 1.0 and one["yes_ratio"] == 0.5

