"""Answer normalization and scoring for short-answer VQA-style benchmarks.

Pure Python (no JAX). Each scorer here computes what one official script computes on the
same predictions (each function names its script; the scripts were read, not copied):

  vqa_accuracy(scoring="official")   GT-Vision-Lab/VQA ``vqaEval.py`` as of its 2021 fix
                                      ("Fixed processing answers bug", a013f00)
  vqa_accuracy(scoring="lmms_eval")  lmms-eval's ``tasks/vqav2/utils.py`` (both sides always
                                      normalized)
  vqa_accuracy(scoring="llava")      LLaVA-1.5's VQAv2 submission: ``convert_vqav2_for_submission.py``
                                      passes each prediction through ``EvalAIAnswerProcessor``,
                                      then the server runs ``vqaEval.py``
  textvqa_accuracy                   LLaVA's ``m4c_evaluator.py`` ``TextVQAAccuracyEvaluator``
                                      (what ``eval_textvqa.py`` reports)
  gqa_accuracy                       LLaVA's ``convert_gqa_for_eval.py`` + GQA's ``eval.py``
  yes_no / pope_scores               LLaVA's ``eval_pope.py``
  scienceqa_choice                   LLaVA's ``eval_science_qa.py``

The answer normalization reproduces the official VQA evaluation script
(``processPunctuation`` followed by ``processDigitArticle``), including its quirks, which are
listed in :func:`normalize_answer`.
"""

from __future__ import annotations

import re

__all__ = [
    "normalize_answer",
    "vqa_accuracy",
    "VQA_SCORINGS",
    "textvqa_accuracy",
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

# Characters processPunctuation deletes or turns into a space. Note what is
# absent: the period (handled by _PERIOD_STRIP), the apostrophe, the colon,
# '%', '#', '&', '*', '$', '~', '|'.
_PUNCTUATION = (";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\",
                "_", "-", ">", "<", "@", "`", ",", "?", "!")

# The official pattern is "(?!<=\d)(\.)(?!\d)". Its first group was meant as
# the look-behind "(?<!\d)" but is a negative look-ahead for the literal "<="
# followed by a digit, which can never match where the next character is the
# period itself. So in effect: delete every '.' that is not followed by a
# digit ("3.5" and ".5" keep theirs, "5." and "a.b" lose it).
_PERIOD_STRIP = re.compile(r"(?!<=\d)(\.)(?!\d)")
# The official script hands re.UNICODE (== 32) as the positional *count*
# argument of periodStrip.sub, so at most 32 periods are removed per answer.
_PERIOD_STRIP_COUNT = int(re.UNICODE)

# A digit, a comma, a digit. Its only use in the official script is as a
# *switch*: when it occurs anywhere in the text, every punctuation character is
# deleted instead of being turned into a space (so "1,000" -> "1000").
_COMMA_STRIP = re.compile(r"(\d)(,)(\d)")
# The same switch in EvalAIAnswerProcessor (LLaVA's m4c_evaluator.py, lmms-eval's
# vqa_eval_metric.py): a digit, one *or more* commas, a digit ("1,,000" switches here only).
_COMMA_STRIP_EVALAI = re.compile(r"(?<=\d)(,)+(?=\d)")

_NUMBER_WORDS = {
    "none": "0", "zero": "0", "one": "1", "two": "2", "three": "3",
    "four": "4", "five": "5", "six": "6", "seven": "7", "eight": "8",
    "nine": "9", "ten": "10",
}

_ARTICLES = frozenset(("a", "an", "the"))

# The official contractions table, entry for entry (including its oddities:
# the capitalised keys "Im", "Ive", "Id've", "I'dve" can never match because
# the text is lowercased first, and "somebody'd" maps to "somebodyd").
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


def _process_punctuation(text: str, comma_switch: re.Pattern = _COMMA_STRIP) -> str:
    """The official ``processPunctuation``.

    Every character of ``_PUNCTUATION`` is deleted when it touches a space
    somewhere in the *input* (``p + ' '`` or ``' ' + p`` occurs) or when the
    input contains digit-comma-digit anywhere (``comma_switch``); otherwise each
    occurrence is replaced by a space. The decision is taken per character,
    looking at the original text, and applies to all occurrences of that
    character. Then periods not followed by a digit are deleted (at most 32).
    """
    has_digit_comma = comma_switch.search(text) is not None
    out = text
    for p in _PUNCTUATION:
        if has_digit_comma or (p + " ") in text or (" " + p) in text:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD_STRIP.sub("", out, count=_PERIOD_STRIP_COUNT)


def _process_digit_article(text: str) -> str:
    """The official ``processDigitArticle``: lowercase, split on whitespace,
    number words zero..ten (and "none") -> digits, drop a/an/the, then expand
    the contractions table word by word, and join with single spaces."""
    words = []
    for word in text.lower().split():
        word = _NUMBER_WORDS.get(word, word)
        if word not in _ARTICLES:
            words.append(word)
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def normalize_answer(text: str) -> str:
    """Normalize an answer the way the official VQAv2 evaluation does.

    Steps, in the official order: newlines and tabs become spaces and the text
    is stripped; then ``processPunctuation``; then ``processDigitArticle``
    (lowercasing happens there, after the punctuation step).

    Behaviours of the official scorer that this keeps on purpose:

    * Punctuation in ``; / [ ] " { } ( ) = + \\ _ - > < @ ` , ? !`` is deleted
      when that character is next to a space somewhere in the text, else it is
      replaced by a space: ``"black-white"`` -> ``"black white"`` but
      ``"black - white"`` -> ``"black white"`` and ``"yes!"`` -> ``"yes"``.
    * If the text contains digit,digit anywhere, *all* of those punctuation
      characters are deleted rather than spaced, so ``"1,000"`` -> ``"1000"``
      (the comma is not kept) and ``"1,2-dog"`` -> ``"12dog"``.
    * A period is removed unless a digit follows it: ``"3.5"`` keeps it,
      ``"yes."`` -> ``"yes"``, ``"u.s.a."`` -> ``"usa"``, ``"5."`` -> ``"5"``;
      at most 32 periods are removed (the official call passes ``re.UNICODE``
      as the count).
    * Apostrophes and colons are not punctuation here: ``"don't"`` stays
      ``"don't"``, ``"dont"`` -> ``"don't"``, ``"10:30"`` stays.
    * Number words map only when they are a whole word: ``"two"`` -> ``"2"``,
      ``"none"`` -> ``"0"``, ``"twenty"`` is unchanged.

    Args:
      text: a prediction or a ground-truth answer.

    Returns:
      The normalized string (possibly empty).
    """
    return _process_digit_article(_process_punctuation(_clean(text)))


def _clean(text: str) -> str:
    """What vqaEval.py does to every answer first: newlines and tabs to spaces, strip."""
    return text.replace("\n", " ").replace("\t", " ").strip()


def evalai_answer(text: str) -> str:
    """``EvalAIAnswerProcessor()(text)`` of LLaVA's ``m4c_evaluator.py`` (also lmms-eval's).

    A pre-step the VQA script lacks -- lowercase, delete every ``,`` and ``?``, write
    ``'s`` as `` 's``, strip -- then the VQA normalization. Its punctuation step has the
    digit-commas-digit switch, but no comma is left by then, so it never fires.
    """
    text = text.lower().replace(",", "").replace("?", "").replace("'s", " 's").strip()
    return _process_digit_article(_process_punctuation(_clean(text), _COMMA_STRIP_EVALAI))


def _leave_one_out(prediction: str, answers: list[str]) -> float:
    """Mean over the n subsets that leave one answer out of min(1, #matches in the subset / 3).

    The official scripts leave out one answer *record* at a time (vqaEval.py compares answer
    dicts, each with its own answer_id; m4c compares (index, answer) pairs), so duplicates
    count separately: this is positional. With n == 1 the only subset is empty: 0.0.
    """
    matches = sum(1 for a in answers if a == prediction)
    total = 0.0
    for a in answers:
        total += min(1.0, (matches - (a == prediction)) / 3.0)
    return total / len(answers)


VQA_SCORINGS = ("official", "lmms_eval", "llava")


def vqa_accuracy(prediction: str, answers: list[str], scoring: str = "official") -> float:
    """VQAv2 soft accuracy of one prediction against the human answers.

    Every scoring takes, for each of the n answers in turn, the other n - 1 and scores
    ``min(#(those equal to the prediction) / 3, 1)``; the result is the mean over the n
    subsets. With 10 answers: 0.3 / 0.6 / 0.9 / 1.0 for 1 / 2 / 3 / 4+ matching humans.
    They differ in what is compared:

    ``"official"`` -- GT-Vision-Lab/VQA's current ``vqaEval.py`` (since its 2021 fix): every
    answer and the prediction get newlines/tabs -> spaces and a strip. If the stripped answers
    are *not all identical*, both sides then go through ``processPunctuation`` and
    ``processDigitArticle`` (:func:`normalize_answer`). If all n answers are the same string
    (the "unanimous" case), nothing more is done: the prediction must equal that string
    exactly, so ``"Yes."`` or ``"Yes"`` score 0 against ten ``"yes"``, ``"two"`` 0 against ten
    ``"2"``. (The 2016 script normalized only punctuation on the answer side; that is gone.)
    VQAv2's annotation files already hold normalized answers, and the script relies on it.

    ``"lmms_eval"`` -- lmms-eval's ``vqav2_process_results``: both sides always go through
    punctuation and digit/article processing (no unanimous exception); its digit-comma switch
    also fires on several commas (``"1,,000"``).

    ``"llava"`` -- how LLaVA-1.5's VQAv2 numbers were made: ``convert_vqav2_for_submission.py``
    writes ``EvalAIAnswerProcessor(prediction)`` (:func:`evalai_answer`), and the evaluation
    server scores that with ``vqaEval.py`` (here: ``"official"``).

    Args:
      prediction: the model's answer.
      answers: the human answers (usually 10, duplicates kept).
      scoring: one of ``VQA_SCORINGS``.

    Returns:
      A float in [0, 1]; 0.0 when there is one answer (its only subset is empty).

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
    """TextVQA accuracy as LLaVA's ``eval_textvqa.py`` reports it (``m4c_evaluator.py``'s
    ``TextVQAAccuracyEvaluator``): both sides through :func:`evalai_answer`, then the
    leave-one-out mean of ``min(1, matches / 3)`` over the 10 answers.

    Raises:
      ValueError: unless there are exactly 10 answers (the official code asserts it).
    """
    if len(answers) != 10:
        raise ValueError(f"textvqa_accuracy: {len(answers)} answers; TextVQA has 10 per question")
    return _leave_one_out(evalai_answer(prediction), [evalai_answer(a) for a in answers])


def gqa_prediction(text: str) -> str:
    """What LLaVA's ``convert_gqa_for_eval.py`` submits: trailing periods removed, lowercased
    (no strip, no other normalization)."""
    return text.rstrip(".").lower()


def gqa_accuracy(prediction: str, answer: str) -> float:
    """GQA accuracy as LLaVA-1.5 computed it: GQA's ``eval.py`` compares
    ``prediction == answer`` exactly, on :func:`gqa_prediction` of the model's text
    (``"Yes."`` -> ``"yes"`` matches ``"yes"``; ``"the dog"`` does not match ``"dog"``,
    ``"two"`` does not match ``"2"``). 1.0 or 0.0."""
    return 1.0 if gqa_prediction(prediction) == answer else 0.0


def exact_match(prediction: str, answer: str) -> float:
    """1.0 when :func:`normalize_answer` of both agree (a lenient match no official scorer
    uses; GQA's is :func:`gqa_accuracy`).

    Args:
      prediction: the model's answer.
      answer: the single ground-truth answer.

    Returns:
      1.0 or 0.0.
    """
    return 1.0 if normalize_answer(prediction) == normalize_answer(answer) else 0.0


POPE_SCORINGS = ("official", "lenient")


def yes_no(text: str, scoring: str = "official") -> str:
    """Parse a POPE generation into ``"yes"`` or ``"no"``.

    ``"official"`` -- LLaVA's ``eval_pope.py`` (POPE's own ``evaluate.py`` has the same
    rule): keep the text before the first ``'.'`` (if any), delete commas, split on single
    spaces; the answer is ``"no"`` if a piece is exactly ``"No"``, ``"no"`` or ``"not"``,
    else ``"yes"`` -- so ``"NO"``, ``"Not here"`` and ``"no\nthere"`` count as yes, and so do
    the empty string and unrelated text.

    ``"lenient"`` -- the same, but words are compared lowercased and split on any
    whitespace (``"NO"``, ``"Not here"`` -> no). No official scorer does this.

    Args:
      text: the model's generation.
      scoring: one of ``POPE_SCORINGS``.

    Returns:
      ``"yes"`` or ``"no"``.
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
    """POPE metrics as LLaVA's ``eval_pope.py`` computes them, "yes" being the positive class.

    Each prediction is parsed with :func:`yes_no` (``scoring``); labels must be "yes" or
    "no" (case and surrounding spaces ignored).

    Args:
      predictions: the model's generations.
      labels: the ground-truth "yes"/"no", same length.
      scoring: passed to :func:`yes_no`.

    Returns:
      ``{"accuracy", "precision", "recall", "f1", "yes_ratio"}`` as floats in
      [0, 1] and ``"num_samples"`` (int). precision = TP / (TP + FP),
      recall = TP / (TP + FN), f1 = 2PR / (P + R), yes_ratio = fraction of
      predictions parsed as "yes". A zero denominator gives 0.0 (where eval_pope.py
      stops with ZeroDivisionError).

    Raises:
      ValueError: if the lengths differ or a label is not "yes"/"no".
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


# Patterns for parse_option_letter, tried in this order (see its docstring).
_LETTER_ALONE = re.compile(r"^\(?([A-Z])\)?[.:]?$")
_LETTER_LEADING = re.compile(r"^(?:\(([A-Z])\)|([A-Z])[.):])(?=\s|$)")
_LETTER_ANSWER = re.compile(
    r"(?i:\b(?:answer|option|choice))(?:\s+is)?\s*[:\-]?\s*\(?([A-Z])(?![A-Za-z])")
_LETTER_PAREN = re.compile(r"\(([A-Z])\)")
_LETTER_PUNCT = re.compile(r"(?<![A-Za-z])([A-Z])[.)](?![A-Za-z])")
_LETTER_TOKEN = re.compile(r"(?<![A-Za-z'])([A-Z])(?![A-Za-z'])")
_ARTICLE_USE = re.compile(r"\s+[a-z]")


def parse_option_letter(text: str, num_options: int) -> int | None:
    """The 0-based option index a multiple-choice generation names.

    In the spirit of LLaVA's ScienceQA scorer (exact letter, then ``"B. ..."``,
    then ``"The answer is B"``), with a few more fallbacks. Option letters are
    the capitals ``A``.. up to ``num_options``; lowercase letters never count.
    Tried in this order on the stripped text, the first hit with a valid letter
    wins (within one rule, the earliest occurrence; an occurrence naming a
    letter beyond ``num_options`` is skipped):

    1. the whole text is one letter, optionally in parentheses and/or followed
       by ``.`` ``)`` or ``:`` -- ``"B"``, ``"B."``, ``"(B)"``, ``"B)"``;
    2. the text starts with a letter followed by ``.`` ``)`` ``:`` or in
       parentheses, then whitespace -- ``"B) dog"``, ``"(C) red"``,
       ``"A. yes"``;
    3. ``answer``/``option``/``choice`` (any case), optional ``is``, optional
       ``:``, optional ``(``, then a letter not followed by a letter --
       ``"The answer is B."``, ``"Answer: (C)"``;
    4. a parenthesized letter anywhere -- ``"I pick (D) here"``;
    5. a letter followed by ``.`` or ``)`` anywhere, not inside a word --
       ``"so B. is right"``;
    6. a standalone capital letter token, except ``A`` and ``I`` followed by a
       space and a lowercase letter (article / pronoun use: ``"A dog"``).

    Args:
      text: the model's generation.
      num_options: how many options the question has (1..26).

    Returns:
      The index (``"A"`` -> 0), or ``None`` when no valid letter is found.

    Raises:
      ValueError: if ``num_options`` is not in 1..26.
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
    """The option index LLaVA's ``eval_science_qa.py`` reads from a generation, or None.

    Its rule, in order, on the text as generated (no strip, case-sensitive): the whole text
    is one of the letters A-E; or the text starts with such a letter followed by ``". "``;
    or ``"The answer is X."`` (any character after X) occurs exactly once. A letter beyond
    the question's options, or none of these, is "FAILED" (None: counted wrong).
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
    """Accuracy of parsed multiple-choice picks.

    Args:
      chosen: the parsed option index per question (``None`` = unparsed,
        which counts as wrong).
      answers: the correct option index per question, same length.

    Returns:
      ``{"accuracy": float, "num_samples": int, "unparsed": int}``; accuracy
      is 0.0 for an empty list.

    Raises:
      ValueError: if the lengths differ.
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
