"""Each scorer of mir_jax.evals.answers against the official script it names, one rule at a time.

Every expected value is worked out by hand from the official definition (quoted in the
comment), never taken from the code under test:

  VQAv2    GT-Vision-Lab/VQA PythonEvaluationTools/vqaEvaluation/vqaEval.py (2021, a013f00):
           strip; if the ten answers are not all the same string, processPunctuation +
           processDigitArticle on both sides; acc = mean over the answers left out in turn of
           min(1, #other answers equal to the prediction / 3)
  lmms     lmms-eval tasks/vqav2/utils.py: the same, always normalized
  llava    LLaVA scripts/convert_vqav2_for_submission.py: EvalAIAnswerProcessor(prediction),
           then vqaEval.py
  TextVQA  LLaVA llava/eval/m4c_evaluator.py TextVQAAccuracyEvaluator: EvalAIAnswerProcessor on
           both sides (lowercase, delete ',' and '?', "'s" -> " 's", then the VQA steps)
  GQA      LLaVA scripts/convert_gqa_for_eval.py (text.rstrip('.').lower()) + GQA eval.py
           (predicted == gold)
  POPE     LLaVA llava/eval/eval_pope.py
  SQA      LLaVA llava/eval/eval_science_qa.py
"""

import pytest

from mir_jax.evals import answers as A
from mir_jax.evals import get_evaluator
from mir_jax.evals.vqa import SCORERS

# Leave-one-out with 10 answers, m of them matching: m subsets keep m - 1 matches, 10 - m keep m.
ACC = {m: (m * min(1, (m - 1) / 3) + (10 - m) * min(1, m / 3)) / 10 for m in range(11)}
# ACC[1] = (1*0 + 9*(1/3))/10 = 0.3; ACC[2] = (2/3 + 8*2/3)/10 = 0.6; ACC[3] = (3*2/3 + 7)/10 = 0.9;
# ACC[4] = (4*1 + 6*1)/10 = 1.0


def test_leave_one_out_table():
    assert [ACC[m] for m in range(5)] == pytest.approx([0.0, 0.3, 0.6, 0.9, 1.0])


# ----- VQAv2: the unanimous case -------------------------------------------------------------------

@pytest.mark.parametrize("prediction, answers, official, lmms, llava", [
    # Ten "yes": unanimous, so vqaEval.py compares the stripped strings only.
    ("yes", ["yes"] * 10, 1.0, 1.0, 1.0),           # 10 matches: every subset has 9 -> 1
    ("Yes.", ["yes"] * 10, 0.0, 1.0, 1.0),          # "Yes." != "yes"; normalized both are "yes"
    ("Yes", ["yes"] * 10, 0.0, 1.0, 1.0),           # no lowercasing in the unanimous branch
    (" yes\n", ["yes"] * 10, 1.0, 1.0, 1.0),        # \n -> space, then strip: "yes"
    ("Two.", ["2"] * 10, 0.0, 1.0, 1.0),            # "two" -> "2" only when normalized
    ("two", ["2"] * 10, 0.0, 1.0, 1.0),
    ("Green", ["green"] * 10, 0.0, 1.0, 1.0),
    ("dog", ["a dog"] * 10, 0.0, 1.0, 0.0),         # llava: EvalAI("dog") = "dog" != "a dog"
    ("a dog", ["a dog"] * 10, 1.0, 1.0, 0.0),       # llava: EvalAI drops the article -> "dog"
])
def test_vqa_unanimous_answers_are_not_normalized(prediction, answers, official, lmms, llava):
    assert A.vqa_accuracy(prediction, answers) == official
    assert A.vqa_accuracy(prediction, answers, scoring="lmms_eval") == lmms
    assert A.vqa_accuracy(prediction, answers, scoring="llava") == llava


def test_vqa_unanimity_is_judged_after_the_strip_not_after_normalization():
    # "yes " strips to "yes": still unanimous, so "Yes" (capital) gets 0.
    assert A.vqa_accuracy("Yes", ["yes"] * 9 + ["yes "]) == 0.0
    # "Yes" differs from "yes" as a string: not unanimous, both sides normalized, 10 matches.
    assert A.vqa_accuracy("Yes.", ["yes"] * 9 + ["Yes"]) == 1.0


# ----- VQAv2: the normalization rules (annotators disagree) -------------------------------------------

def test_vqa_digit_words():
    # answers -> "2", "2", "3" x 8; "2" matches 2 of them: ACC[2] = 0.6.
    assert A.vqa_accuracy("2", ["two"] * 2 + ["three"] * 8) == pytest.approx(0.6)
    # "none" -> "0": 3 matches: ACC[3] = 0.9.
    assert A.vqa_accuracy("None", ["0"] * 3 + ["1"] * 7) == pytest.approx(0.9)
    # "twenty" is not in the table: no match with "20".
    assert A.vqa_accuracy("twenty", ["20"] * 5 + ["2"] * 5) == 0.0


def test_vqa_articles():
    # "a dog" and "the dog" both -> "dog": 3 matches: (3 * 2/3 + 7 * 1) / 10 = 0.9.
    assert A.vqa_accuracy("a dog", ["the dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)
    # "an" only as a word: "anteater" stays: 0 matches with "teater".
    assert A.vqa_accuracy("anteater", ["teater"] * 3 + ["cat"] * 7) == 0.0


def test_vqa_contractions():
    # "dont" -> "don't" on the answer side; 1 match: ACC[1] = 0.3, from either spelling.
    answers = ["dont"] + ["no"] * 9
    assert A.vqa_accuracy("don't", answers) == pytest.approx(0.3)
    assert A.vqa_accuracy("dont", answers) == pytest.approx(0.3)
    # "Im" is in the table capitalised, but text is lowercased first: "im" stays "im".
    assert A.vqa_accuracy("im", ["Im"] * 4 + ["no"] * 6) == 1.0  # both -> "im": 4 matches
    assert A.vqa_accuracy("I'm", ["Im"] * 4 + ["no"] * 6) == 0.0


def test_vqa_punctuation_inside_numbers():
    answers = ["1000"] * 4 + ["many"] * 6
    # digit,comma,digit switches every punctuation mark to deletion: "1,000" -> "1000", 4 matches.
    assert A.vqa_accuracy("1,000", answers) == 1.0
    # "1, 000": no digit,digit; ',' touches a space -> deleted: "1 000" != "1000".
    assert A.vqa_accuracy("1, 000", answers) == 0.0
    # "1,,000": vqaEval.py's switch needs exactly one comma: ',' -> space, "1  000" -> "1 000";
    # lmms-eval's switch (digit, commas, digit) fires: "1000", 4 matches.
    assert A.vqa_accuracy("1,,000", answers) == 0.0
    assert A.vqa_accuracy("1,,000", answers, scoring="lmms_eval") == 1.0
    # A period before a digit stays: "3.5" != "35" (the period is kept), 0 matches.
    assert A.vqa_accuracy("3.5", ["35"] * 5 + ["3"] * 5) == 0.0
    # "black-white": '-' touches no space -> a space: "black white", 3 matches: ACC[3].
    assert A.vqa_accuracy("black-white", ["black white"] * 3 + ["red"] * 7) == pytest.approx(0.9)


# Cases run through the real vqaEval.py (py2.7) and convert_vqav2_for_submission.py once
# (docs/evaluation.md, "Checked against the official scripts"); the values worked out by hand.
@pytest.mark.parametrize("prediction, answers, official, llava", [
    # Not unanimous: both sides normalized. "It's a cat" -> "it's cat" ("a" dropped, "it's" kept:
    # "'" is no punctuation there): 6 matches -> 1. llava: EvalAI turns "'s" into " 's" first:
    # "it 's cat" matches nothing -> 0.
    ("It's a cat", ["cat"] * 2 + ["its cat"] * 2 + ["it's cat"] * 6, 1.0, 0.0),
    # "the man's hat" -> "man's hat": 4 matches -> 1; llava: "man 's hat" -> 0.
    ("the man's hat", ["man's hat"] * 4 + ["hat"] * 6, 1.0, 0.0),
    # 40 periods: each periodStrip pass deletes 32 (re.UNICODE as the count), so vqaEval.py's one
    # pass leaves "yes........" -> 0; llava makes two passes (EvalAI, then vqaEval.py): "yes",
    # 5 matches -> 1.
    ("yes" + "." * 40, ["yes"] * 5 + ["no"] * 5, 0.0, 1.0),
    # "Two." -> "two" -> "2" against seven "2" and three "two" -> "2": 10 matches -> 1 both ways.
    ("Two.", ["2"] * 7 + ["two"] * 3, 1.0, 1.0),
    # Unanimous "no": compared as given, "NO" != "no" -> 0; llava lowercases first -> 1.
    ("NO", ["no"] * 10, 0.0, 1.0),
])
def test_vqa_cases_checked_against_vqaeval(prediction, answers, official, llava):
    assert A.vqa_accuracy(prediction, answers) == official
    assert A.vqa_accuracy(prediction, answers, scoring="llava") == llava


@pytest.mark.parametrize("m", [1, 2, 3, 4])
def test_vqa_three_of_ten_cap(m):
    # m humans of 10 said "red" (the rest "blue", so not unanimous): ACC[m], capped at 1.
    assert A.vqa_accuracy("red", ["red"] * m + ["blue"] * (10 - m)) == pytest.approx(ACC[m])


# ----- TextVQA (m4c) -------------------------------------------------------------------------------

def test_textvqa_evalai_processing():
    # Both sides through EvalAIAnswerProcessor, even when the ten agree: "Nikon," -> "nikon",
    # 9 matches -> every subset has >= 8 -> 1.0.
    assert A.textvqa_accuracy("Nikon,", ["nikon"] * 9 + ["nikon camera"]) == 1.0
    assert A.textvqa_accuracy("STOP?", ["stop"] * 10) == 1.0  # '?' deleted, lowercased
    # "'s" -> " 's": "Dog's" -> "dog 's" matches the 2 "dog's": ACC[2]; "dogs" matches none.
    assert A.textvqa_accuracy("Dog's", ["dog's"] * 2 + ["cat"] * 8) == pytest.approx(0.6)
    assert A.textvqa_accuracy("dogs", ["dog's"] * 2 + ["cat"] * 8) == 0.0
    # Every comma deleted first: "1,000" -> "1000", and "1, 000" -> "1 000" (no match).
    assert A.textvqa_accuracy("1,000", ["1000"] * 3 + ["x"] * 7) == pytest.approx(0.9)
    assert A.textvqa_accuracy("1, 000", ["1000"] * 3 + ["x"] * 7) == 0.0
    with pytest.raises(ValueError, match="9 answers"):  # the official code asserts 10
        A.textvqa_accuracy("a", ["a"] * 9)


# ----- GQA -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("prediction, gold, expected", [
    ("yes", "yes", 1.0),
    ("Yes.", "yes", 1.0),     # rstrip('.') then lower()
    ("Left..", "left", 1.0),  # every trailing period
    ("yes ", "yes", 0.0),     # no strip
    ("the dog", "dog", 0.0),  # no article removal
    ("two", "2", 0.0),        # no digit words
    ("no!", "no", 0.0),       # no other punctuation removed
])
def test_gqa_exact_match_after_llava_conversion(prediction, gold, expected):
    assert A.gqa_accuracy(prediction, gold) == expected


# ----- POPE ----------------------------------------------------------------------------------------

def test_pope_scores_eval_pope_counts():
    # Parsed as eval_pope.py: "Yes" -> yes; "NO" -> yes (not "No"/"no"/"not"); "No, it is not."
    # -> first sentence "No it is not" -> no; "not sure" -> no; "Yes, there is" -> yes.
    preds = ["Yes", "NO", "No, it is not.", "not sure", "Yes, there is"]
    labels = ["yes", "no", "no", "yes", "no"]
    # TP 1 (#1), FP 2 (#2, #5), TN 1 (#3), FN 1 (#4).
    s = A.pope_scores(preds, labels)
    precision, recall = 1 / 3, 1 / 2
    assert s["accuracy"] == pytest.approx(2 / 5)
    assert s["precision"] == pytest.approx(precision)
    assert s["recall"] == pytest.approx(recall)
    assert s["f1"] == pytest.approx(2 * precision * recall / (precision + recall))  # = 0.4
    assert s["yes_ratio"] == pytest.approx(3 / 5)


# ----- ScienceQA -----------------------------------------------------------------------------------

@pytest.mark.parametrize("text, n, expected", [
    ("B", 3, 1),                                   # the whole text is a letter
    ("B. dog", 3, 1),                              # letter + ". "
    ("The answer is C.", 3, 2),                    # one "The answer is X."
    ("The answer is B. The answer is C.", 3, None),  # two: FAILED
    ("b", 3, None),                                # lowercase: FAILED
    ("E", 3, None),                                # beyond the options: -1 -> wrong
    ("B.", 3, None),                               # "B." is neither "B" nor "B. ..."
    ("(B)", 3, None),
    (" B", 3, None),                               # no strip
])
def test_scienceqa_choice(text, n, expected):
    assert A.scienceqa_choice(text, n) == expected


# ----- the VQA evaluator: each record by its benchmark's scorer, named -------------------------------

def test_vqa_evaluator_scores_each_metric_and_names_the_scorer():
    records = [{"answers": ["2"] * 10, "metric": "vqa"},            # "Two." official: 0
               {"answers": ["nikon"] * 10, "metric": "textvqa"},    # "Nikon." m4c: 1
               {"answers": ["dog"], "metric": "gqa"},               # "a dog" GQA: 0
               {"answers": ["two"] * 10, "metric": "normalized"},   # "Two." normalized: 1
               {"answers": ["yes"], "metric": "gqa", "balanced": False}]  # not counted
    answers = ["Two.", "Nikon.", "a dog", "Two.", "no"]
    scores, details = get_evaluator("vqa").score(records, answers)
    assert scores["accuracy"] == pytest.approx((0 + 1 + 0 + 1) / 4)
    assert set(details["scorer"].split("; ")) == {
        SCORERS[("vqa", "official")], SCORERS[("textvqa", None)], SCORERS[("gqa", None)],
        SCORERS[("normalized", None)]}
    # scoring="lmms_eval" / "llava" change the VQAv2 record only: "Two." -> "2": 1.
    for scoring in ("lmms_eval", "llava"):
        scores, details = get_evaluator("vqa", scoring=scoring).score(records[:1], answers[:1])
        assert scores["accuracy"] == 1.0 and details["scorer"] == SCORERS[("vqa", scoring)]
    with pytest.raises(ValueError, match="scoring='x'"):
        get_evaluator("vqa", scoring="x")
