"""mir_jax.evals.answers and mir_jax.evals.caption_metrics against independent references.

The expected values are written by hand (VQA normalization rules, leave-one-out
accuracy, POPE counts) or come from pycocoevalcap's scorers called directly,
never from the code under test.
"""

import os
import shutil

import pytest

from mir_jax.evals import answers as A

HAVE_JAVA = shutil.which("java") is not None
needs_java = pytest.mark.skipif(not HAVE_JAVA, reason="java is not on PATH")


# ---------------------------------------------------------------------------
# normalize_answer: one or more cases per rule of the official vqaEval.py
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    # number words -> digits, period not followed by a digit removed
    ("Two.", "2"),
    ("ten", "10"),
    ("none", "0"),
    ("one two three", "1 2 3"),
    ("twenty", "twenty"),          # only zero..ten (and none) are mapped
    # articles a / an / the removed, lowercasing
    ("a dog", "dog"),
    ("An apple", "apple"),
    ("The Dog!", "dog"),           # '!' is not next to a space -> ' ', stripped
    ("the", ""),
    ("The 2 dogs.", "2 dogs"),
    # contractions table
    ("isnt", "isn't"),
    ("dont", "don't"),
    ("don't", "don't"),            # the apostrophe is not in the punct list
    ("whats up?", "what's up"),
    ("somebody'd", "somebodyd"),   # the official table maps it this way round
    ("Im", "im"),                  # key "Im" is capitalised, text is lowercased first
    # periods: kept only when a digit follows
    ("yes.", "yes"),
    ("3.5", "3.5"),
    (".5", ".5"),
    ("5.", "5"),
    ("u.s.a.", "usa"),
    # commas: digit,digit anywhere switches every punct char to deletion, so the
    # official scorer turns "1,000" into "1000" (the comma is NOT kept)
    ("1,000", "1000"),
    ("1,2-dog", "12dog"),          # same switch: '-' deleted, not spaced
    ("Hello,world", "hello world"),   # no digit,digit and no ', ' -> ' '
    ("Hello, world", "hello world"),  # ', ' present -> ',' deleted
    # punctuation next to a space is deleted, otherwise replaced by a space
    ("black-white", "black white"),
    ("black - white", "black white"),
    ("(left)", "left"),
    ('"yes"', "yes"),
    # not in the punct list: ':' '%'
    ("10:30", "10:30"),
    ("50%", "50%"),
    # newline / tab -> space, strip, whitespace collapsed by the word split
    ("  Yes\n", "yes"),
    ("red\tand\nblue", "red and blue"),
    ("", ""),
])
def test_normalize_answer_rules(text, expected):
    assert A.normalize_answer(text) == expected


def test_normalize_answer_removes_at_most_32_periods():
    # The official call periodStrip.sub("", text, re.UNICODE) passes 32 as the
    # replacement count: of 40 periods, 8 survive.
    assert A.normalize_answer("." * 40) == "." * 8


# ---------------------------------------------------------------------------
# vqa_accuracy / exact_match
# ---------------------------------------------------------------------------

def _answers(k, match="2", other="3"):
    """10 human answers, k of them equal to `match`."""
    return [match] * k + [other] * (10 - k)


@pytest.mark.parametrize("k, expected", [
    # k humans gave the predicted answer. Leaving out each of the 10 humans in
    # turn, the remaining 9 contain k-1 matches (when a matching human is left
    # out: k subsets) or k matches (the 10-k others); each subset scores
    # min(matches/3, 1) and the 10 subset scores are averaged:
    (0, 0.0),
    (1, (1 * 0 / 3 + 9 * 1 / 3) / 10),        # = 0.3
    (2, (2 * 1 / 3 + 8 * 2 / 3) / 10),        # = 0.6
    (3, (3 * 2 / 3 + 7 * 1.0) / 10),          # = 0.9
    (4, (4 * 1.0 + 6 * 1.0) / 10),            # = 1.0 (3 matches left when one is out)
    (10, 1.0),
])
def test_vqa_accuracy_leave_one_out(k, expected):
    assert A.vqa_accuracy("2", _answers(k)) == pytest.approx(expected, abs=1e-12)


def test_vqa_accuracy_hand_values():
    assert A.vqa_accuracy("2", _answers(1)) == pytest.approx(0.3)
    assert A.vqa_accuracy("2", _answers(2)) == pytest.approx(0.6)
    assert A.vqa_accuracy("2", _answers(3)) == pytest.approx(0.9)


def test_vqa_accuracy_normalizes_both_sides_when_annotators_disagree():
    # Answers not all identical: vqaEval.py normalizes both sides. "two" -> "2" on the
    # prediction side, "Two." -> "2" on the answer side.
    assert A.vqa_accuracy("two", _answers(2)) == pytest.approx(0.6)
    assert A.vqa_accuracy("2", ["Two."] * 3 + ["3"] * 7) == pytest.approx(0.9)
    assert A.vqa_accuracy("The Dog", ["dog"] * 3 + ["cat"] * 7) == pytest.approx(0.9)
    # Ten identical answers: no normalization, "Ten." != "ten" (0); lmms-eval normalizes (1).
    assert A.vqa_accuracy("10 people", ["ten"] * 10) == 0.0
    assert A.vqa_accuracy("Ten.", ["ten"] * 10) == 0.0
    assert A.vqa_accuracy("Ten.", ["ten"] * 10, scoring="lmms_eval") == 1.0


def test_vqa_accuracy_single_answer_and_errors():
    # One answer: its only leave-one-out subset is empty, 0 matches -> 0.0 (vqaEval.py's value).
    assert A.vqa_accuracy("dog", ["dog"]) == 0.0
    assert A.vqa_accuracy("dogs", ["dog"]) == 0.0
    with pytest.raises(ValueError):
        A.vqa_accuracy("dog", [])
    with pytest.raises(ValueError, match="scoring='vqa2016'"):
        A.vqa_accuracy("dog", ["dog"] * 10, scoring="vqa2016")


def test_exact_match():
    assert A.exact_match("The cat.", "cat") == 1.0
    assert A.exact_match("Two", "2") == 1.0
    assert A.exact_match("cats", "cat") == 0.0


# ---------------------------------------------------------------------------
# POPE
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("Yes, there is.", "yes"),
    ("No.", "no"),
    ("There is not a cat", "no"),
    ("yes", "yes"),
    ("No, there is no dog.", "no"),
    ("Yes. But there is no dog.", "yes"),   # only the first sentence counts
    ("There is a dog, no", "no"),           # commas removed before splitting
    ("Nothing like that", "yes"),           # whole words only
    ("NO", "yes"),                          # eval_pope.py checks "No", "no", "not" exactly
    ("Not here", "yes"),                    # "Not" is none of them
    ("no\nthere", "yes"),                   # split on ' ' only: one piece "no\nthere"
    ("", "yes"),                            # the official rule: no 'no'/'not' -> yes
])
def test_yes_no(text, expected):
    assert A.yes_no(text) == expected


@pytest.mark.parametrize("text, expected", [("NO", "no"), ("Not here", "no"), ("no\nthere", "no"),
                                            ("Yes", "yes")])
def test_yes_no_lenient(text, expected):
    assert A.yes_no(text, scoring="lenient") == expected


def test_pope_scores_hand_counted():
    preds = ["Yes", "Yes, there is a dog.", "No.", "Yes", "No, there is not.",
             "There is not a cat."]
    labels = ["yes", "yes", "yes", "no", "no", "no"]
    # parsed: yes yes no yes no no
    # TP = 2 (items 1, 2), FN = 1 (item 3), FP = 1 (item 4), TN = 2 (items 5, 6)
    # accuracy = (TP+TN)/6 = 4/6; precision = TP/(TP+FP) = 2/3;
    # recall = TP/(TP+FN) = 2/3; f1 = 2*(2/3)*(2/3)/(4/3) = 2/3;
    # yes_ratio = 3 parsed yes / 6 = 0.5
    s = A.pope_scores(preds, labels)
    assert s["num_samples"] == 6
    assert s["accuracy"] == pytest.approx(4 / 6)
    assert s["precision"] == pytest.approx(2 / 3)
    assert s["recall"] == pytest.approx(2 / 3)
    assert s["f1"] == pytest.approx(2 / 3)
    assert s["yes_ratio"] == pytest.approx(0.5)


def test_pope_scores_asymmetric_and_zero_division():
    # parsed: yes yes yes no; labels yes no no no -> TP=1 FP=2 TN=1 FN=0
    # precision 1/3, recall 1/1, f1 = 2*(1/3)*1/(4/3) = 0.5, acc 2/4, yes 3/4
    s = A.pope_scores(["yes", "Yes", "yes it is", "no"], ["yes", "no", "no", "no"])
    assert (s["precision"], s["recall"]) == (pytest.approx(1 / 3), pytest.approx(1.0))
    assert s["f1"] == pytest.approx(0.5)
    assert s["accuracy"] == pytest.approx(0.5)
    assert s["yes_ratio"] == pytest.approx(0.75)
    # no predicted and no actual positives: precision/recall/f1 0.0, accuracy 1
    s = A.pope_scores(["No", "no."], ["no", "no"])
    assert s["accuracy"] == 1.0
    assert s["precision"] == s["recall"] == s["f1"] == s["yes_ratio"] == 0.0
    with pytest.raises(ValueError):
        A.pope_scores(["yes"], ["yes", "no"])
    with pytest.raises(ValueError):
        A.pope_scores(["yes"], ["maybe"])


# ---------------------------------------------------------------------------
# Multiple choice
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("text, num_options, expected", [
    ("B", 4, 1),
    ("B.", 4, 1),
    ("(B)", 4, 1),
    ("  C\n", 4, 2),
    ("B) dog", 4, 1),
    ("C. red", 4, 2),
    ("(D) because it is red", 4, 3),
    ("The answer is B.", 4, 1),
    ("The answer is A.", 4, 0),
    ("Answer: C", 4, 2),
    ("Answer: (C)", 4, 2),
    ("I think it is D", 4, 3),
    ("It must be (C) here", 4, 2),
    ("E", 4, None),              # beyond num_options
    ("E", 5, 4),
    ("Answer: E", 4, None),
    ("A dog is on the bed", 4, None),   # article, not an option
    ("b", 4, None),              # lowercase letters are not options
    ("", 4, None),
])
def test_parse_option_letter(text, num_options, expected):
    assert A.parse_option_letter(text, num_options) == expected


def test_parse_option_letter_bad_num_options():
    with pytest.raises(ValueError):
        A.parse_option_letter("A", 0)


def test_multiple_choice_scores():
    # correct: items 0 and 3; item 1 wrong; item 2 unparsed (counts wrong)
    s = A.multiple_choice_scores([0, 1, None, 2], [0, 2, 1, 2])
    assert s == {"accuracy": 0.5, "num_samples": 4, "unparsed": 1}
    assert A.multiple_choice_scores([], [])["accuracy"] == 0.0
    with pytest.raises(ValueError):
        A.multiple_choice_scores([0], [0, 1])


# ---------------------------------------------------------------------------
# Captions
# ---------------------------------------------------------------------------

REFS = {
    "img1": ["A man riding a wave on top of a surfboard.",
             "A surfer rides a large wave in the ocean.",
             "A person on a surfboard riding a wave."],
    "img2": ["Two giraffes standing next to each other in a field.",
             "Two giraffes stand in the grass near trees."],
    "img3": ["A plate of food with broccoli and carrots.",
             "A white plate topped with broccoli, carrots and rice.",
             "Some vegetables on a plate."],
    "img4": ["A red double-decker bus driving down a street.",
             "A red bus on the city street."],
    7: ["A cat sleeping on a laptop keyboard.",
        "A cat is lying on the keyboard of a laptop.",
        "The cat's asleep on a computer."],
}
PREDS = {
    "img1": "A man riding a wave on a surfboard.",
    "img2": "Two giraffes standing in a field!",
    "img3": "A plate of broccoli, carrots and rice.",
    "img4": "A red bus driving down the street.",
    7: "A cat is sleeping on a laptop.",
}
# The same captions tokenized by hand the way pycocoevalcap's PTB pipeline does
# (lowercase, '.', ',', '!' dropped, "cat's" -> "cat 's").
REFS_TOK = {
    "img1": ["a man riding a wave on top of a surfboard",
             "a surfer rides a large wave in the ocean",
             "a person on a surfboard riding a wave"],
    "img2": ["two giraffes standing next to each other in a field",
             "two giraffes stand in the grass near trees"],
    "img3": ["a plate of food with broccoli and carrots",
             "a white plate topped with broccoli carrots and rice",
             "some vegetables on a plate"],
    "img4": ["a red double-decker bus driving down a street",
             "a red bus on the city street"],
    7: ["a cat sleeping on a laptop keyboard",
        "a cat is lying on the keyboard of a laptop",
        "the cat 's asleep on a computer"],
}
PREDS_TOK = {
    "img1": ["a man riding a wave on a surfboard"],
    "img2": ["two giraffes standing in a field"],
    "img3": ["a plate of broccoli carrots and rice"],
    "img4": ["a red bus driving down the street"],
    7: ["a cat is sleeping on a laptop"],
}


@pytest.fixture(scope="module")
def cm():
    pytest.importorskip("pycocoevalcap.bleu.bleu")
    from mir_jax.evals import caption_metrics
    return caption_metrics


def _direct_scores(gts, res):
    from pycocoevalcap.bleu.bleu import Bleu
    from pycocoevalcap.cider.cider import Cider
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    cider, cider_per = Cider().compute_score(gts, res)
    return bleu, cider, cider_per


def _check_against_direct(out, gts, res):
    bleu, cider, cider_per = _direct_scores(gts, res)
    for n in range(4):
        assert out[f"bleu_{n + 1}"] == pytest.approx(bleu[n], abs=1e-12, rel=0)
    assert out["cider"] == pytest.approx(cider, abs=1e-12, rel=0)
    assert set(out["per_image"]["cider"]) == set(gts)
    for key, s in zip(gts, cider_per):
        assert out["per_image"]["cider"][key] == pytest.approx(s, abs=1e-12, rel=0)
    assert out["num_images"] == len(gts)
    assert 0.0 < out["bleu_4"] < 1.0 and out["cider"] > 0.0


@needs_java
def test_caption_scores_match_pycocoevalcap_ptb(cm):
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    # COCOEvalCap's preparation: PTB-tokenize references and predictions.
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": PREDS[k]}] for k in REFS})
    out = cm.caption_scores(PREDS, REFS)
    assert out["tokenizer"] == "ptb"
    assert out["skipped"] == []
    _check_against_direct(out, gts, res)


def test_caption_scores_simple_tokenizer_match_pycocoevalcap(cm):
    out = cm.caption_scores(PREDS, REFS, tokenizer="simple")
    assert out["tokenizer"] == "simple"
    _check_against_direct(out, REFS_TOK, PREDS_TOK)


@needs_java
def test_simple_tokenizer_agrees_with_ptb(cm):
    from pycocoevalcap.tokenizer.ptbtokenizer import PUNCTUATIONS, PTBTokenizer
    assert set(PUNCTUATIONS) == set(cm._PTB_PUNCTUATIONS)
    captions = [c for v in REFS.values() for c in v] + list(PREDS.values()) + [
        "It's the dogs' bone; 'single' quotes!!",
        "A man can't see it, isn't he? I'm sure they'll go.",
        "A dog (brown) [x] sits... on a mat -- outside.",
        '"Quoted" words, 3.5 kg and 2,000,000 people at 5:30.',
        "Dr. Smith on 5th Ave. in the U.S.A. with an x-ray and/or e-mail",
        "well--known cannot gonna",
        "",
    ]
    ptb = PTBTokenizer().tokenize({i: [{"caption": c}] for i, c in enumerate(captions)})
    for i, c in enumerate(captions):
        assert cm.simple_tokenize(c) == ptb[i][0], c


def test_caption_scores_identical_prediction_bleu_is_one(cm):
    cap = "a dog runs on the green grass"
    refs = {1: [cap] * 3, 2: ["A cat sleeps on the red sofa."] * 2}
    preds = {1: cap, 2: "A cat sleeps on the red sofa."}
    out = cm.caption_scores(preds, refs)
    # every n-gram of the hypothesis matches and its length equals the
    # reference length (brevity penalty 1), so BLEU-n = 1 (up to 1e-9 smoothing)
    for n in range(1, 5):
        assert out[f"bleu_{n}"] == pytest.approx(1.0, abs=1e-6)


def test_caption_scores_single_image_cider_is_zero(cm):
    # IDF over one image: log(1) - log(df=1) = 0 for every n-gram.
    out = cm.caption_scores({"x": "a dog on grass"}, {"x": ["a dog on grass", "a dog"]},
                            tokenizer="simple")
    assert out["cider"] == 0.0
    assert out["per_image"]["cider"] == {"x": 0.0}


def test_caption_scores_errors_and_skips(cm, monkeypatch):
    with pytest.raises(ValueError, match="ids differ"):
        cm.caption_scores({"a": "x"}, {"b": ["x"]})
    with pytest.raises(ValueError, match="empty"):
        cm.caption_scores({"a": "x"}, {"a": []})
    with pytest.raises(ValueError, match="unknown metric"):
        cm.caption_scores({"a": "x"}, {"a": ["x"]}, metrics=("rouge_x",))
    out = cm.caption_scores({"a": "x y"}, {"a": ["x y"]}, metrics=("cider", "spice"),
                            tokenizer="simple")
    assert out["skipped"] == ["spice"] and "spice" in out["skip_reasons"]
    assert "bleu_4" not in out and "cider" in out
    # Without java: the simple tokenizer, METEOR skipped, 'ptb' refused.
    monkeypatch.setattr(shutil, "which", lambda name, *a, **k: None)
    out = cm.caption_scores({"a": "x y"}, {"a": ["x y"]}, metrics=("bleu", "meteor"))
    assert out["tokenizer"] == "simple"
    assert out["skipped"] == ["meteor"] and "meteor" not in out
    with pytest.raises(ValueError, match="java"):
        cm.caption_scores({"a": "x"}, {"a": ["x"]}, tokenizer="ptb")


@needs_java
@pytest.mark.skipif(os.environ.get("MIR_JAX_TEST_METEOR") != "1",
                    reason="METEOR starts two ~10 s java processes; set MIR_JAX_TEST_METEOR=1")
def test_caption_scores_meteor_matches_pycocoevalcap(cm):
    from pycocoevalcap.meteor.meteor import Meteor
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer
    tok = PTBTokenizer()
    gts = tok.tokenize({k: [{"caption": c} for c in v] for k, v in REFS.items()})
    res = tok.tokenize({k: [{"caption": PREDS[k]}] for k in REFS})
    score, per = Meteor().compute_score(gts, res)
    out = cm.caption_scores(PREDS, REFS, metrics=("meteor",))
    assert out["meteor"] == pytest.approx(score, abs=1e-12, rel=0)
    for key, s in zip(gts, per):
        assert out["per_image"]["meteor"][key] == pytest.approx(s, abs=1e-12, rel=0)
