"""VizWiz: the reader (VizWiz's val.json, alone or with a LLaVA-style question JSONL) and the
accuracy of the VizWiz-VQA API's vqaEval.py, one rule at a time.

The official definition (VizWiz-VQA API, PythonEvaluationTools vqaEval.py, read, not copied):
the prediction has newlines/tabs made spaces, is stripped, then processPunctuation and
processDigitArticle (whose contractions table is the 2016 VQA one, typographic apostrophes
U+2019); the ten human answers are compared as given (no normalization, no strip); the
accuracy is the mean over the answers left out in turn of min(1, #other answers equal to the
prediction / 3). LLaVA-1.5 submits EvalAIAnswerProcessor(prediction)
(scripts/convert_vizwiz_for_submission.py): scoring="llava". Every expected value below is
worked out by hand from that definition.
"""

import json

import pytest

from mir_jax.data.errors import DataError
from mir_jax.evals import answers as A
from mir_jax.evals import get_evaluator
from mir_jax.evals.datasets import load_task, load_vizwiz
from mir_jax.evals.rescore import rescore
from mir_jax.evals.vqa import SCORERS

# Leave-one-out with 10 answers, m matching: m subsets keep m - 1 matches, 10 - m keep m.
# m=1: (1*0 + 9*1/3)/10 = 0.3; m=2: (2*1/3 + 8*2/3)/10 = 0.6; m=3: (3*2/3 + 7*1)/10 = 0.9;
# m>=4: every subset keeps >= 3 matches: 1.0.
ACC = {0: 0.0, 1: 0.3, 2: 0.6, 3: 0.9, 4: 1.0, 10: 1.0}
SUFFIX = ("\nWhen the provided information is insufficient, respond with 'Unanswerable'."
          "\nAnswer the question using a single word or phrase.")


# ----- the accuracy ------------------------------------------------------------------------------

def test_unanswerable_is_an_answer_like_any_other():
    # VizWiz's own example: 7 of 10 said "unanswerable", one each "chair", "text", "bottle".
    answers = ["unanswerable", "chair", "unanswerable", "unanswerable", "unanswerable", "text",
               "unanswerable", "bottle", "unanswerable", "unanswerable"]
    # "Unanswerable." -> lowercased, the final period deleted: "unanswerable", 7 matches: 1.0.
    assert A.vizwiz_accuracy("Unanswerable.", answers) == 1.0
    # "chair": 1 match: ACC[1] = 0.3.
    assert A.vizwiz_accuracy("chair", answers) == pytest.approx(0.3)
    # "unanswerable" by 3 of 10 (the rest "red"): ACC[3] = 0.9.
    assert A.vizwiz_accuracy("UNANSWERABLE", ["unanswerable"] * 3 + ["red"] * 7) == pytest.approx(0.9)


@pytest.mark.parametrize("m", [1, 2, 3, 4, 10])
def test_three_of_ten_cap(m):
    # m of 10 said "red", the rest "blue": ACC[m], capped at 1 from 4 matches on.
    assert A.vizwiz_accuracy("red", ["red"] * m + ["blue"] * (10 - m)) == pytest.approx(ACC[m])


def test_the_prediction_is_always_normalized_the_answers_never():
    # Ten "yes": the VQAv2 script would compare unnormalized ("Yes." -> 0); VizWiz's normalizes
    # the prediction regardless: "Yes." -> "yes", 10 matches: 1.0.
    assert A.vizwiz_accuracy("Yes.", ["yes"] * 10) == 1.0
    assert A.vqa_accuracy("Yes.", ["yes"] * 10) == 0.0
    # Human answers as given: "Yes" (capital) is never lowercased, so "Yes" -> "yes" matches none.
    assert A.vizwiz_accuracy("Yes", ["Yes"] * 10) == 0.0
    # ... nor stripped: " yes" != "yes".
    assert A.vizwiz_accuracy("yes", [" yes"] * 10) == 0.0
    # ... nor article-dropped: "a dog" -> "dog" != "a dog"; "the dog" -> "dog" = "dog" (4): 1.0.
    assert A.vizwiz_accuracy("a dog", ["a dog"] * 10) == 0.0
    assert A.vizwiz_accuracy("the dog", ["dog"] * 4 + ["cat"] * 6) == 1.0
    # Newline -> space, strip: " dog\n" -> "dog".
    assert A.vizwiz_accuracy(" dog\n", ["dog"] * 4 + ["cat"] * 6) == 1.0


def test_normalization_digits_punctuation_contractions():
    # Number words: "Two" -> "2", 3 matches: 0.9; "twenty" is not in the table: 0.
    assert A.vizwiz_accuracy("Two", ["2"] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert A.vizwiz_accuracy("twenty", ["20"] * 10) == 0.0
    # Digit,comma,digit: every punctuation mark deleted: "1,000" -> "1000" (4 matches): 1.0.
    assert A.vizwiz_accuracy("1,000", ["1000"] * 4 + ["x"] * 6) == 1.0
    # "-" touching no space becomes a space: "black-white" -> "black white", 2 matches: 0.6.
    assert A.vizwiz_accuracy("black-white", ["black white"] * 2 + ["x"] * 8) == pytest.approx(0.6)
    # The 2016 table: "dont" -> "don\u2019t" (U+2019), which 4 answers spell that way: 1.0;
    # against the ASCII "don't" it matches none: 0.
    assert A.vizwiz_normalize("dont") == "don\u2019t"
    assert A.vizwiz_accuracy("dont", ["don\u2019t"] * 4 + ["no"] * 6) == 1.0
    assert A.vizwiz_accuracy("dont", ["don't"] * 4 + ["no"] * 6) == 0.0
    # "don't" is no key (apostrophe is not punctuation): unchanged, matches the 4 ASCII ones: 1.0.
    assert A.vizwiz_accuracy("don't", ["don't"] * 4 + ["no"] * 6) == 1.0
    # One of the few ASCII values of that table: "weve" -> "we've" (3 matches): 0.9.
    assert A.vizwiz_accuracy("weve", ["we've"] * 3 + ["no"] * 7) == pytest.approx(0.9)
    # VQAv2's current table is all ASCII: the same "dont" there is "don't".
    assert A.normalize_answer("dont") == "don't"


def test_llava_scoring_applies_evalai_first():
    # EvalAIAnswerProcessor: "'s" -> " 's": "It's" -> "it 's" (then unchanged by VizWiz's
    # steps), no match with "it's": 0; official: "It's" -> "it's", 4 matches: 1.0.
    answers = ["it's"] * 4 + ["no"] * 6
    assert A.vizwiz_accuracy("It's", answers) == 1.0
    assert A.vizwiz_accuracy("It's", answers, scoring="llava") == 0.0
    # EvalAI deletes every comma: "x,y" -> "xy" (3 matches): 0.9; official: "," touches no
    # space and there is no digit,comma,digit: a space, "x y": 0.
    answers = ["xy"] * 3 + ["z"] * 7
    assert A.vizwiz_accuracy("x,y", answers, scoring="llava") == pytest.approx(0.9)
    assert A.vizwiz_accuracy("x,y", answers) == 0.0
    with pytest.raises(ValueError, match="empty"):
        A.vizwiz_accuracy("a", [])
    with pytest.raises(ValueError, match="scoring='lmms_eval'"):
        A.vizwiz_accuracy("a", ["a"], scoring="lmms_eval")


def test_unanswerable_f1():
    # Predicted unanswerable (normalizes to "unanswerable"): #1, #2; truly unanswerable
    # (answerable 0): #1, #3. TP 1 (#1), FP 1 (#2), FN 1 (#3): F1 = 2*1 / (2*1 + 1 + 1) = 0.5.
    preds = ["Unanswerable", "unanswerable.", "dog", "cat"]
    assert A.vizwiz_unanswerable_f1(preds, [0, 1, 0, 1]) == pytest.approx(0.5)
    assert A.vizwiz_unanswerable_f1(["dog"], [1]) == 0.0  # no positive at all


# ----- the reader --------------------------------------------------------------------------------

def _ann(image, question, answers, answer_type="other", answerable=1):
    return {"image": image, "question": question, "answer_type": answer_type, "answerable": answerable,
            "answers": [{"answer": a, "answer_confidence": "yes"} for a in answers]}


def vizwiz_files(tmp_path):
    val = tmp_path / "val.json"
    val.write_text(json.dumps([
        _ann("VizWiz_val_00000000.jpg", "What is this?", ["unanswerable"] * 7 + ["chair"] * 3,
             "unanswerable", 0),
        _ann("VizWiz_val_00000001.jpg", "What color is this shirt?", ["blue"] * 2 + ["navy blue"] * 8)]))
    llava = tmp_path / "llava_val.jsonl"
    llava.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question_id": 7, "image": "VizWiz_val_00000001.jpg", "text": "What color is this shirt?" + SUFFIX},
        {"question_id": 3, "image": "VizWiz_val_00000000.jpg", "text": "What is this?" + SUFFIX}]))
    return str(val), str(llava)


def test_reader_alone_and_with_llava_questions(tmp_path):
    val, llava = vizwiz_files(tmp_path)
    alone = load_vizwiz(val, check_images=False)
    assert [r["question_id"] for r in alone] == [0, 1]  # the index in val.json, an int
    r = alone[0]
    assert r["image"] == str(tmp_path / "VizWiz_val_00000000.jpg")
    assert r["answers"] == ["unanswerable"] * 7 + ["chair"] * 3 and r["metric"] == "vizwiz"
    assert (r["answer_type"], r["answerable"]) == ("unanswerable", 0)
    assert r["prompt"] == "What is this?" + SUFFIX  # LLaVA-1.5's VizWiz text
    paired = load_task("vizwiz", annotations_json=val, questions_jsonl=llava, check_images=False)
    assert [r["question_id"] for r in paired] == [7, 3]  # the question file's order and ints
    assert paired[0]["question"] == "What color is this shirt?"
    assert paired[0]["prompt"] == "What color is this shirt?" + SUFFIX
    assert paired[0]["answers"] == ["blue"] * 2 + ["navy blue"] * 8  # found by image
    assert load_vizwiz(val, llava, limit=1, check_images=False)[0]["question_id"] == 7


def test_reader_test_files_give_predictions_only_and_unknown_images_are_refused(tmp_path):
    # test.json has no answers: every record gets none (predictions for the EvalAI upload).
    test = tmp_path / "test.json"
    test.write_text(json.dumps([{"image": "VizWiz_test_00000000.jpg", "question": "What is this?"}]))
    (r,) = load_vizwiz(test, check_images=False)
    assert (r["question_id"], r["image_file"], r["answers"], r["answerable"]) == (0, "VizWiz_test_00000000.jpg", [], None)
    assert r["prompt"] == "What is this?" + SUFFIX
    # A file where only some questions lack answers is not a test file: refused.
    mixed = tmp_path / "mixed.json"
    mixed.write_text(json.dumps([_ann("a.jpg", "Q?", ["x"] * 10), {"image": "b.jpg", "question": "Q?"}]))
    with pytest.raises(DataError, match=r"mixed.json: \[1\]: no 'answers', though other questions"):
        load_vizwiz(mixed, check_images=False)
    val, _ = vizwiz_files(tmp_path)
    stray = tmp_path / "q.jsonl"
    stray.write_text(json.dumps({"question_id": 1, "image": "nope.jpg", "text": "Hi?" + SUFFIX}) + "\n")
    with pytest.raises(DataError, match="no annotation for image 'nope.jpg'"):
        load_vizwiz(val, stray, check_images=False)
    with pytest.raises(DataError, match="image not found"):
        load_vizwiz(val)


def test_vqa_evaluator_and_rescore_on_vizwiz(tmp_path):
    val, llava = vizwiz_files(tmp_path)
    data = {"format": "vizwiz", "annotations_json": val, "questions_jsonl": llava, "check_images": False}
    records = load_task("vizwiz", **{k: v for k, v in data.items() if k != "format"})
    # #7 "Navy blue." -> "navy blue": 8 matches: 1.0. #3 "Unanswerable": 7 matches: 1.0.
    scores, details = get_evaluator("vqa").score(records, ["Navy blue.", "Unanswerable"])
    assert scores["accuracy"] == 1.0 and details["scorer"] == SCORERS[("vizwiz", "official")]
    assert details["unanswerable_f1"] == 1.0  # TP 1, FP 0, FN 0
    assert details["per_kind"] == {"other": 1.0, "unanswerable": 1.0}  # VizWiz's answer types
    # A LLaVA answer file: #7 "It's blue" -> "it's blue" (no match): 0; #3 "chair": 3 matches:
    # 0.9. Mean 0.45 both ways (EvalAI's "it 's blue" matches nothing either).
    answers = tmp_path / "llava-v1.5-13b.jsonl"
    answers.write_text("".join(json.dumps(r) + "\n" for r in [
        {"question_id": 3, "prompt": "What is this?" + SUFFIX, "text": "chair"},
        {"question_id": 7, "prompt": "What color is this shirt?" + SUFFIX, "text": "It's blue"}]))
    res = rescore(str(answers), "vqa", data)
    assert res.scores["accuracy"] == pytest.approx(0.45)
    assert res.scores["accuracy_llava"] == pytest.approx(0.45)
    assert "accuracy_lmms_eval" not in res.scores
    assert res.details["unanswerable_f1"] == 0.0  # "chair" is not "unanswerable": TP 0
    assert res.details["missing"] == res.details["unmatched"] == 0
