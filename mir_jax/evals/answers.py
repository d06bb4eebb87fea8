"""Answer normalization and scoring for short-answer VQA-style benchmarks (pure Python).

Each scorer equals one official script (read, not copied; quirks kept, docs/evaluation.md):

  vqa_accuracy(scoring="official")   GT-Vision-Lab/VQA ``vqaEval.py`` (2021 fix, a013f00)
  vqa_accuracy(scoring="lmms_eval")  lmms-eval ``tasks/vqav2/utils.py``
  vqa_accuracy(scoring="llava")      LLaVA-1.5 ``EvalAIAnswerProcessor``, then ``vqaEval.py``
  vizwiz_accuracy                    the VizWiz-VQA API's ``vqaEval.py`` (``scoring="llava"``:
                                     LLaVA's ``convert_vizwiz_for_submission.py`` first)
  textvqa_accuracy                   LLaVA ``m4c_evaluator.py`` ``TextVQAAccuracyEvaluator``
  gqa_accuracy                       LLaVA ``convert_gqa_for_eval.py`` + GQA ``eval.py``
  yes_no / pope_scores               LLaVA ``eval_pope.py``
  scienceqa_choice                   LLaVA ``eval_science_qa.py``
"""

from __future__ import annotations

import re

__all__ = [
    "normalize_answer",
    "vqa_accuracy",
    "VQA_SCORINGS",
    "textvqa_accuracy",
    "vizwiz_accuracy",
    "VIZWIZ_SCORINGS",
    "gqa_accuracy",
    "exact_match",
    "yes_no",
    "POPE_SCORINGS",
    "pope_scores",
    "parse_option_letter",
    "scienceqa_choice",
    "multiple_choice_scores",
]

# ---------------------------------------------------------------------------
# Tables of the official VQA evaluation (vqaEval.py).
# ---------------------------------------------------------------------------

# Characters processPunctuation deletes or spaces; the period, apostrophe and colon are not here.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\",
                "_", "-", ">", "<", "@", "`", ",", "?", "!")

# The official pattern, verbatim: its "(?!<=\d)" is a no-op look-ahead (a typo for a
# look-behind), so it deletes every '.' not followed by a digit.
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official script passes re.UNICODE (32) as the count of periodStrip.sub.
_PERIOD_STRIP_COUNT = int(re.UNICODE)

# Digit-comma-digit anywhere switches punctuation from "space" to "delete" ("1,000" -> "1000").
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# EvalAIAnswerProcessor's version of the switch: one or more commas.
_COMMA_STRIP_EVALAI = re.compile(r"(?<=\d)(,)+(?=\d)")

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3",
    "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10",
}

_ARTICLES = frozenset(("a", "an", "the"))

# The official contractions table, verbatim (its capitalised keys never match lowercased text).
_CONTRACTIONS = {
    "aint": "ain't", "arent": "aren't", "cant": "can't", "couldve": "could've",
    "couldnt": "couldn't", "couldn'tve": "couldn't've",
    "couldnt've": "couldn't've", "didnt": "didn't", "doesnt": "doesn't",
    "dont": "don't", "hadnt": "hadn't", "hadnt've": "hadn't've",
    "hadn'tve": "hadn't've", "hasnt": "hasn't", "havent": "haven't",
    "hed": "he'd", "hed've": "he'd've", "he'dve": "he'd've", "hes": "he's",
    "howd": "how'd", "howll": "how'll", "hows": "how's", "Id've": "I'd've",
    "I'dve": "I'd've", "Im": "I'm", "Ive": "I've", "isnt": "isn't",
    "itd": "it'd", "itd've": "it'd've", "it'dve": "it'd've", "itll": "it'll",
    "let's": "let's", "maam": "ma'am", "mightnt": "mightn't",
    "mightnt've": "mightn't've", "mightn'tve": "mightn't've",
    "mightve": "might've", "mustnt": "mustn't", "mustve": "must've",
    "neednt": "needn't", "notve": "not've", "oclock": "o'clock",
    "oughtnt": "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at",
    "'ow'sat": "'ow's'at", "shant": "shan't", "shed've": "she'd've",
    "she'dve": "she'd've", "she's": "she's", "shouldve": "should've",
    "shouldnt": "shouldn't", "shouldnt've": "shouldn't've",
    "shouldn'tve": "shouldn't've", "somebody'd": "somebodyd",
    "somebodyd've": "somebody'd've", "somebody'dve": "somebody'd've",
    "somebodyll": "somebody'll", "somebodys": "somebody's",
    "someoned": "someone'd", "someoned've": "someone'd've",
    "someone'dve": "someone'd've", "someonell": "someone'll",
    "someones": "someone's", "somethingd": "something'd",
    "somethingd've": "something'd've", "something'dve": "something'd've",
    "somethingll": "something'll", "thats": "that's", "thered": "there'd",
    "thered've": "there'd've", "there'dve": "there'd've",
    "therere": "there're", "theres": "there's", "theyd": "they'd",
    "theyd've": "they'd've", "they'dve": "they'd've", "theyll": "they'll",
    "theyre": "they're", "theyve": "they've", "twas": "'twas",
    "wasnt": "wasn't", "wed've": "we'd've", "we'dve": "we'd've",
    "weve": "we've", "werent": "weren't", "whatll": "what'll",
    "whatre": "what're", "whats": "what's", "whatve": "what've",
    "whens": "when's", "whered": "where'd", "wheres": "where's",
    "whereve": "where've", "whod": "who'd", "whod've": "who'd've",
    "who'dve": "who'd've", "wholl": "who'll", "whos": "who's",
    "whove": "who've", "whyll": "why'll", "whyre": "why're", "whys": "why's",
    "wont": "won't", "wouldve": "would've", "wouldnt": "wouldn't",
    "wouldnt've": "wouldn't've", "wouldn'tve": "wouldn't've", "yall": "y'all",
    "yall'll": "y'all'll", "y'allll": "y'all'll", "yall'd've": "y'all'd've",
    "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", "youd": "you'd",
    "youd've": "you'd've", "you'dve": "you'd've", "youll": "you'll",
    "youre": "you're", "youve": "you've",
}


# VizWiz's vqaEval.py keeps the table of the 2016 VQA script (GT-Vision-Lab/VQA before 458a8b2),
# whose apostrophes are the typographic U+2019 except in these keys and these keys' values.
_ASCII_KEYS = frozenset(("couldn'tve", "hadn'tve"))
_ASCII_VALUES = frozenset(("aint", "arent", "cant", "couldve", "couldnt", "weve", "wheres", "whove"))
_VIZWIZ_CONTRACTIONS = {
    (k if k in _ASCII_KEYS else k.replace("'", "\u2019")): (v if k in _ASCII_VALUES else v.replace("'", "\u2019"))
    for k, v in _CONTRACTIONS.items()}


def _process_punctuation(text: str, comma_switch: re.Pattern = _COMMA_STRIP) -> str:
    """The official ``processPunctuation``: a punctuation character is deleted if it touches
    a space or the text has digit-comma-digit, else spaced; then periods not before a digit go.
    """
    has_digit_comma = comma_switch.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        if has_digit_comma or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str, contractions: dict = _CONTRACTIONS) -> str:
    """The official ``processDigitArticle``: lowercase, number words to digits, drop
    articles, expand contractions."""
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(word)
    return " ".join(contractions.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Normalize an answer like the official VQAv2 evaluation (its quirks kept:
    ``"1,000"`` -> ``"1000"``, ``"u.s.a."`` -> ``"usa"``, ``"two"`` -> ``"2"``).

    Newlines/tabs to spaces and strip, ``processPunctuation``, ``processDigitArticle``; returns
    the normalized string (possibly empty).
    """
    return _process_digit_article(_process_punctuation(_clean(text)))


def _clean(text: str) -> str:
    """vqaEval.py's first step: newlines and tabs to spaces, strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def evalai_answer(text: str) -> str:
    """``EvalAIAnswerProcessor()(text)`` of LLaVA's ``m4c_evaluator.py`` (also lmms-eval's).

    Lowercase, delete ``,`` and ``?``, ``'s`` -> `` 's``, strip, then the VQA normalization.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _process_digit_article(_process_punctuation(_clean(text), _COMMA_STRIP_EVALAI))


def _leave_one_out(prediction: str, answers: list[str]) -> float:
    """Mean over the n leave-one-out subsets of min(1, matches / 3).

    Positional, like the official scripts: duplicate answers count separately. n == 1 gives 0.0.
    """
    matches = sum(1 for a in answers if a == prediction)
    total = 0.0
    for a in answers:
        total += min(1.0, (matches - (a == prediction)) / 3.0)
    return total / len(answers)


VQA_SCORINGS = ("official", "lmms_eval", "llava")


def vqa_accuracy(prediction: str, answers: list[str], scoring: str = "official") -> float:
    """VQAv2 soft accuracy of one prediction against the human answers.

    The mean over the n leave-one-out subsets of ``min(matches / 3, 1)``. ``"official"``:
    ``vqaEval.py``, which normalizes (:func:`normalize_answer`) only if the answers are not all
    identical (``"Yes."`` scores 0 against ten ``"yes"``); ``"lmms_eval"``: both sides always
    normalized; ``"llava"``: :func:`evalai_answer` of the prediction, then ``"official"``.

    Args:
      prediction: the model's answer.
      answers: the human answers (usually 10, duplicates kept).
      scoring: one of ``VQA_SCORINGS``.

    Returns:
      A float in [0, 1]; 0.0 when there is one answer.

    Raises:
      ValueError: if ``answers`` is empty or ``scoring`` is unknown.
    """
    if len(answers) == 0:
        raise ValueError("vqa_accuracy: the answers list is empty")
    if scoring == "llava":
        prediction, scoring = evalai_answer(prediction), "official"
    if scoring == "official":
        pred, gts = _clean(prediction), [_clean(a) for a in answers]
        if len(set(gts)) > 1:  # vqaEval.py normalizes only when the annotators disagree
            pred, gts = normalize_answer(pred), [normalize_answer(a) for a in gts]
    elif scoring == "lmms_eval":
        def norm(t):
            return _process_digit_article(_process_punctuation(_clean(t), _COMMA_STRIP_EVALAI))

        pred, gts = norm(prediction), [norm(a) for a in answers]
    else:
        raise ValueError(f"vqa_accuracy: scoring={scoring!r} not in {VQA_SCORINGS}")
    return _leave_one_out(pred, gts)


def textvqa_accuracy(prediction: str, answers: list[str]) -> float:
    """TextVQA accuracy as LLaVA's ``eval_textvqa.py`` reports it: both sides through
    :func:`evalai_answer`, then the leave-one-out mean of ``min(1, matches / 3)``.

    Raises:
      ValueError: unless there are exactly 10 answers (the official code asserts it).
    """
    if len(answers) != 10:
        raise ValueError(f"textvqa_accuracy: {len(answers)} answers; TextVQA has 10 per question")
    return _leave_one_out(evalai_answer(prediction), [evalai_answer(a) for a in answers])


VIZWIZ_SCORINGS = ("official", "llava")


def vizwiz_normalize(text: str) -> str:
    """What VizWiz's ``vqaEval.py`` compares of a prediction: newlines/tabs to spaces and strip,
    ``processPunctuation``, ``processDigitArticle`` with its contractions table (the 2016 VQA
    one: ``"dont"`` -> ``"don\u2019t"`` with U+2019, ``"weve"`` -> ``"we've"``)."""
    return _process_digit_article(_process_punctuation(_clean(text)), _VIZWIZ_CONTRACTIONS)


def vizwiz_accuracy(prediction: str, answers: list[str], scoring: str = "official") -> float:
    """VizWiz VQA accuracy of one prediction against the (usually 10) human answers.

    ``"official"``: the VizWiz-VQA API's ``vqaEval.py`` (the prediction normalized with
    :func:`vizwiz_normalize`, the human answers as given, then the leave-one-out mean);
    ``"llava"``: :func:`evalai_answer` of the prediction first, as LLaVA-1.5's
    ``convert_vizwiz_for_submission.py`` writes it. ValueError for no answers or an unknown
    scoring.
    """
    if len(answers) == 0:
        raise ValueError("vizwiz_accuracy: the answers list is empty")
    if scoring == "llava":
        prediction = evalai_answer(prediction)
    elif scoring != "official":
        raise ValueError(f"vizwiz_accuracy: scoring={scoring!r} not in {VIZWIZ_SCORINGS}")
    return _leave_one_out(vizwiz_normalize(prediction), list(answers))


def vizwiz_unanswerable_f1(predictions: list[str], answerable: list[int], scoring: str = "official") -> float:
    """F1 of "unanswerable" as the positive class, as VizWiz's ``evaluate_unanswerability``
    computes it (``f1_score(1 - answerable, 1 - predicted answerable)``), a prediction being
    unanswerable when it normalizes to ``"unanswerable"``. 0.0 when there is no positive."""
    if len(predictions) != len(answerable):
        raise ValueError(f"vizwiz_unanswerable_f1: {len(predictions)} predictions, {len(answerable)} labels")
    tp = fp = fn = 0
    for pred, label in zip(predictions, answerable):
        if scoring == "llava":
            pred = evalai_answer(pred)
        said = vizwiz_normalize(pred) == "unanswerable"
        truth = int(label) == 0
        tp += said and truth
        fp += said and not truth
        fn += truth and not said
    return 2 * tp / (2 * tp + fp + fn) if tp else 0.0


def gqa_prediction(text: str) -> str:
    """What LLaVA's ``convert_gqa_for_eval.py`` submits: trailing periods removed, lowercased."""
    return text.rstrip(".").lower()


def gqa_accuracy(prediction: str, answer: str) -> float:
    """GQA accuracy as LLaVA-1.5 computed it: exact match of :func:`gqa_prediction` against
    the answer (``"Yes."`` matches ``"yes"``, ``"two"`` does not match ``"2"``). 1.0 or 0.0."""
    return 1.0 if gqa_prediction(prediction) == answer else 0.0


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when :func:`normalize_answer` of both agree, else 0.0 (lenient; no official scorer)."""
    return 1.0 if normalize_answer(prediction) == normalize_answer(answer) else 0.0


POPE_SCORINGS = ("official", "lenient")


def yes_no(text: str, scoring: str = "official") -> str:
    """Parse a POPE generation into ``"yes"`` or ``"no"``.

    ``"official"``: LLaVA's ``eval_pope.py`` (``"no"`` if a word before the first ``'.'`` is
    ``"No"``, ``"no"`` or ``"not"``, so ``"NO"`` and empty text count as yes); ``"lenient"``:
    the same, case-insensitive (no official scorer). ValueError for another ``scoring``.
    """
    if "." in text:
        text = text.split(".", 1)[0]
    text = text.replace(",", "")
    if scoring == "official":
        words = text.split(" ")
        return "no" if ("No" in words or "not" in words or "no" in words) else "yes"
    if scoring != "lenient":
        raise ValueError(f"yes_no: scoring={scoring!r} not in {POPE_SCORINGS}")
    words = text.lower().split()
    return "no" if ("no" in words or "not" in words) else "yes"


def pope_scores(predictions: list[str], labels: list[str], scoring: str = "official") -> dict:
    """POPE metrics as LLaVA's ``eval_pope.py`` computes them, "yes" being positive.

    Args:
      predictions: the model's generations, parsed with :func:`yes_no` (``scoring``).
      labels: "yes"/"no" per prediction (case and surrounding spaces ignored).

    Returns:
      ``{"accuracy", "precision", "recall", "f1", "yes_ratio"}`` floats in [0, 1] (0.0 for a
      zero denominator) and ``"num_samples"``. ValueError for differing lengths or a bad label.
    """
    if len(predictions) != len(labels):
        raise ValueError(
            f"pope_scores: {len(predictions)} predictions but {len(labels)} labels")
    tp = fp = tn = fn = 0
    for i, (pred, label) in enumerate(zip(predictions, labels)):
        lab = str(label).strip().lower()
        if lab not in ("yes", "no"):
            raise ValueError(f"pope_scores: label {i} is {label!r}, not 'yes' or 'no'")
        p = yes_no(pred, scoring)
        if p == "yes":
            if lab == "yes":
                tp += 1
            else:
                fp += 1
        else:
            if lab == "no":
                tn += 1
            else:
                fn += 1
    n = tp + fp + tn + fn

    def _div(a: float, b: float) -> float:
        return float(a) / float(b) if b else 0.0

    precision = _div(tp, tp + fp)
    recall = _div(tp, tp + fn)
    return {
        "accuracy": _div(tp + tn, n),
        "precision": precision,
        "recall": recall,
        "f1": _div(2.0 * precision * recall, precision + recall),
        "yes_ratio": _div(tp + fp, n),
        "num_samples": n,
    }


# Patterns for parse_option_letter, in the order it tries them.
_LETTER_ALONE = re.compile(r"^\(?([A-Z])\)?[.:]?$")
_LETTER_LEADING = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.):])(?=\s|$)")
_LETTER_ANSWER = re.compile(
    r"(?i:\b(?:answer|option|choice))(?:\s+is)?\s*[:\-]?\s*\(?([A-Z])(?![A-Za-z])")
_LETTER_PAREN = re.compile(r"\(([A-Z])\)")
_LETTER_PUNCT = re.compile(r"(?<![A-Za-z])([A-Z])[.)](?![A-Za-z])")
_LETTER_TOKEN = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")
_ARTICLE_USE = re.compile(r"\s+[a-z]")


def parse_option_letter(text: str, num_options: int) -> int | None:
    """The 0-based option index a multiple-choice generation names, or None.

    Like LLaVA's ScienceQA scorer, with more fallbacks; only capitals up to ``num_options``
    count, first hit wins: the whole text is a letter (``"(B)"``); it starts with one
    (``"B) dog"``); ``answer``/``option``/``choice`` [``is``] then a letter; a parenthesized
    letter; a letter and ``.``/``)`` outside a word; a standalone capital other than the
    article/pronoun ``A``/``I``. ValueError unless ``num_options`` is in 1..26.
    """
    if not 1 <= num_options <= 26:
        raise ValueError(f"parse_option_letter: num_options={num_options} not in 1..26")
    s = text.strip()

    def _index(letter: str) -> int | None:
        idx = ord(letter) - ord("A")
        return idx if 0 <= idx < num_options else None

    m = _LETTER_ALONE.match(s)
    if m:
        return _index(m.group(1))
    m = _LETTER_LEADING.match(s)
    if m:
        idx = _index(m.group(1) or m.group(2))
        if idx is not None:
            return idx
    for pattern in (_LETTER_ANSWER, _LETTER_PAREN, _LETTER_PUNCT):
        for m in pattern.finditer(s):
            idx = _index(m.group(1))
            if idx is not None:
                return idx
    for m in _LETTER_TOKEN.finditer(s):
        letter = m.group(1)
        if letter in ("A", "I") and _ARTICLE_USE.match(s, m.end()):
            continue
        idx = _index(letter)
        if idx is not None:
            return idx
    return None


_SCIENCEQA_LETTERS = ("A", "B", "C", "D", "E")
_SCIENCEQA_ANSWER_IS = re.compile(r"The answer is ([A-Z]).")


def scienceqa_choice(text: str, num_options: int) -> int | None:
    """The option index LLaVA's ``eval_science_qa.py`` reads from a generation, or None
    (the text is one of A-E, starts with one and ``". "``, or holds one ``"The answer is X."``).
    """
    if text in _SCIENCEQA_LETTERS:
        letter = text
    elif len(text) >= 3 and text[0] in _SCIENCEQA_LETTERS and text[1:3] == ". ":
        letter = text[0]
    else:
        found = _SCIENCEQA_ANSWER_IS.findall(text)
        letter = found[0] if len(found) == 1 else None
    if letter is None or letter not in _SCIENCEQA_LETTERS[:num_options]:
        return None
    return _SCIENCEQA_LETTERS.index(letter)


def multiple_choice_scores(chosen: list[int | None], answers: list[int]) -> dict:
    """Accuracy of parsed picks: ``chosen`` (option index or None, counted wrong) against
    ``answers`` -> ``{"accuracy", "num_samples", "unparsed"}`` (accuracy 0.0 if empty).
    ValueError if the lengths differ.
    """
    if len(chosen) != len(answers):
        raise ValueError(
            f"multiple_choice_scores: {len(chosen)} choices but {len(answers)} answers")
    n = len(answers)
    correct = sum(1 for c, a in zip(chosen, answers) if c is not None and int(c) == int(a))
    unparsed = sum(1 for c in chosen if c is None)
    return {
        "accuracy": correct / n if n else 0.0,
        "num_samples": n,
        "unparsed": unparsed,
    }
