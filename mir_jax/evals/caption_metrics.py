"""COCO-style caption metrics (BLEU-1..4, CIDEr-D, METEOR): pycocoevalcap's own scorers, on
inputs prepared as ``COCOEvalCap`` prepares them (PTB tokenization; without ``java``,
:func:`simple_tokenize`, and the result says which ran).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil

__all__ = ["caption_scores", "simple_tokenize", "SUPPORTED_METRICS"]

SUPPORTED_METRICS = ("bleu", "cider", "meteor", "spice")

_SPICE_REASON = ("SPICE is not supported offline: pycocoevalcap's SPICE jar "
                 "downloads Stanford CoreNLP models on first use")
_METEOR_NO_JAVA = "METEOR needs java on PATH (pycocoevalcap runs meteor-1.5.jar)"

# pycocoevalcap's ptbtokenizer.PUNCTUATIONS, copied so the fallback works without it (a test
# checks they agree).
_PTB_PUNCTUATIONS = frozenset(["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-",
                               "-RCB-", ".", "?", "!", ",", ":", "-", "--",
                               "...", ";"])

# Line separators become spaces so one caption stays one line for java / PTB.
_LINE_BREAKS = re.compile("[\r\n\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029]")

# PTB's -lowerCase escapes brackets lowercased, which PUNCTUATIONS (uppercase) does not drop.
_BRACKETS = {"(": "-lrb-", ")": "-rrb-", "[": "-lsb-", "]": "-rsb-",
             "{": "-lcb-", "}": "-rcb-"}

# Abbreviations PTB keeps with their period (a subset); "no." only before a number.
_ABBREVIATIONS = ("mr", "mrs", "ms", "dr", "st", "jr", "sr", "vs", "prof", "mt",
                  "ave", "rd", "blvd", "co", "corp", "inc", "ltd", "etc")

# Words PTB splits in two.
_SPLIT_WORDS = re.compile(r"\b(can)(not)\b|\b(gon|wan)(na)\b|\b(got)(ta)\b")
_CLITIC_NT = re.compile(r"(?<=\w)(n't)\b")
_CLITIC = re.compile(r"(?<=\w)('(?:s|m|re|ve|ll|d))\b")
_TOKEN = re.compile(
    r"-[lr][rsc]b-"                                          # bracket escapes
    r"|n't|'(?:s|m|re|ve|ll|d)\b"                            # split clitics
    r"|(?:[^\W\d_]\.){2,}"                                   # u.s.a. e.g.
    r"|(?<!\w)(?:" + "|".join(_ABBREVIATIONS) + r")\.(?=\s|$)"  # mr. dr. st.
    r"|(?<!\w)no\.(?=\s+\d)"                                 # no. 5
    r"|\d+(?:[.,:]\d+)+(?!\w)"                                # 3.5 1,000 5:30
    r"|\w+(?:[-'/.&]\w+)*"                                   # words, x-ray, a/b
    r"|\.{2,}|-{2,}|!+|\?+|`+|'+"                            # punctuation runs
    r"|[^\w\s]")                                             # any other symbol


def simple_tokenize(caption: str) -> str:
    """Pure-Python approximation of pycocoevalcap's PTB tokenization of a caption; returns
    the space-joined tokens (rare input such as ``#tag`` may split differently from PTB).
    """
    text = _LINE_BREAKS.sub(" ", caption).lower()
    for bracket, escape in _BRACKETS.items():
        text = text.replace(bracket, f" {escape} ")
    text = text.replace('"', " '' ")
    text = _SPLIT_WORDS.sub(lambda m: " ".join(g for g in m.groups() if g), text)
    text = _CLITIC_NT.sub(r" \1", text)
    text = _CLITIC.sub(r" \1", text)
    return " ".join(t for t in _TOKEN.findall(text) if t not in _PTB_PUNCTUATIONS)


@contextlib.contextmanager
def _java_stderr_silenced():
    """Point file descriptor 2 at /dev/null: the java tokenizer's subprocess prints progress
    lines on every call."""
    import sys

    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _ptb_tokenize(predictions: dict, references: dict) -> tuple[dict, dict]:
    """Tokenize with pycocoevalcap's PTBTokenizer in a single java call."""
    from pycocoevalcap.tokenizer.ptbtokenizer import PTBTokenizer

    combined = {}
    for key, refs in references.items():
        combined[("ref", key)] = [{"caption": _LINE_BREAKS.sub(" ", r)} for r in refs]
    for key, pred in predictions.items():
        combined[("pred", key)] = [{"caption": _LINE_BREAKS.sub(" ", pred)}]
    with _java_stderr_silenced():
        out = PTBTokenizer().tokenize(combined)
    gts = {key: out.get(("ref", key), []) for key in references}
    res = {key: out.get(("pred", key), []) for key in references}
    for key in references:
        if len(gts[key]) != len(references[key]) or len(res[key]) != 1:
            raise RuntimeError(
                f"caption_scores: PTBTokenizer returned a different number of "
                f"captions for image {key!r} than it was given")
    return gts, res


def _check_inputs(predictions: dict, references: dict) -> None:
    if not isinstance(predictions, dict) or not isinstance(references, dict):
        raise ValueError("caption_scores: predictions and references must be dicts")
    if not references:
        raise ValueError("caption_scores: no images (references is empty)")
    pred_ids, ref_ids = set(predictions), set(references)
    if pred_ids != ref_ids:
        missing = sorted(map(repr, ref_ids - pred_ids))[:3]
        extra = sorted(map(repr, pred_ids - ref_ids))[:3]
        raise ValueError(
            f"caption_scores: prediction and reference ids differ "
            f"({len(ref_ids - pred_ids)} without a prediction, e.g. {missing}; "
            f"{len(pred_ids - ref_ids)} without references, e.g. {extra})")
    for key, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, (list, tuple)):
            raise ValueError(
                f"caption_scores: references[{key!r}] must be a list of strings")
        if len(refs) == 0:
            raise ValueError(f"caption_scores: references[{key!r}] is empty")
        if not all(isinstance(r, str) for r in refs):
            raise ValueError(
                f"caption_scores: references[{key!r}] must be a list of strings")
        if not isinstance(predictions[key], str):
            raise ValueError(f"caption_scores: predictions[{key!r}] must be a string")


def caption_scores(predictions: dict, references: dict,
                   metrics=("bleu", "cider"), *, tokenizer: str = "auto") -> dict:
    """COCO caption metrics of one caption per image against its references.

    Args:
      predictions: ``{image_id: caption}``.
      references: ``{image_id: [reference caption, ...]}``, the same ids, each non-empty.
        CIDEr's IDF comes from these references, so score a whole split in one call.
      metrics: any of ``"bleu"`` (``bleu_1`` .. ``bleu_4``), ``"cider"`` (CIDEr-D, not scaled
        by 100), ``"meteor"`` (needs java), ``"spice"`` (not supported offline).
      tokenizer: ``"auto"`` (PTB when ``java`` is on PATH, else simple), ``"ptb"``, ``"simple"``.

    Returns:
      ``{"bleu_1" .. "bleu_4", "cider", "meteor"`` (those computed), ``"num_images",
      "tokenizer", "per_image": {metric: {image_id: float}}, "skipped": [metric],
      "skip_reasons": {metric: str}}``. ValueError for bad inputs or ``"ptb"`` without java.
    """
    _check_inputs(predictions, references)
    if isinstance(metrics, str):
        metrics = (metrics,)
    wanted = []
    for m in metrics:
        name = str(m).lower()
        if name not in SUPPORTED_METRICS:
            raise ValueError(
                f"caption_scores: unknown metric {m!r} (supported: {', '.join(SUPPORTED_METRICS)})")
        if name not in wanted:
            wanted.append(name)

    have_java = shutil.which("java") is not None
    if tokenizer == "auto":
        tokenizer = "ptb" if have_java else "simple"
    if tokenizer not in ("ptb", "simple"):
        raise ValueError(f"caption_scores: tokenizer must be 'auto', 'ptb' or 'simple', not {tokenizer!r}")
    if tokenizer == "ptb" and not have_java:
        raise ValueError("caption_scores: tokenizer='ptb' needs java on PATH")

    skipped, reasons = [], {}
    if "spice" in wanted:
        skipped.append("spice")
        reasons["spice"] = _SPICE_REASON
    if "meteor" in wanted and not have_java:
        skipped.append("meteor")
        reasons["meteor"] = _METEOR_NO_JAVA
    to_run = [m for m in wanted if m not in skipped]

    ids = list(references)
    if tokenizer == "ptb":
        gts, res = _ptb_tokenize(predictions, references)
    else:
        gts = {k: [simple_tokenize(r) for r in references[k]] for k in ids}
        res = {k: [simple_tokenize(predictions[k])] for k in ids}

    result: dict = {}
    per_image: dict = {}
    if "bleu" in to_run:
        from pycocoevalcap.bleu.bleu import Bleu

        score, scores = Bleu(4).compute_score(gts, res, verbose=0)
        for n in range(4):
            result[f"bleu_{n + 1}"] = float(score[n])
        per_image["bleu_4"] = {k: float(s) for k, s in zip(gts, scores[3])}
    if "cider" in to_run:
        from pycocoevalcap.cider.cider import Cider

        score, scores = Cider().compute_score(gts, res)
        result["cider"] = float(score)
        per_image["cider"] = {k: float(s) for k, s in zip(gts, scores)}
    if "meteor" in to_run:
        from pycocoevalcap.meteor.meteor import Meteor

        meteor = Meteor()
        try:
            score, scores = meteor.compute_score(gts, res)
        finally:
            # Stop the java process now rather than at garbage collection.
            proc = meteor.meteor_p
            try:
                proc.stdin.close()
            except OSError:
                pass
            proc.kill()
            proc.wait()
        result["meteor"] = float(score)
        per_image["meteor"] = {k: float(s) for k, s in zip(gts, scores)}

    result.update({
        "num_images": len(ids),
        "tokenizer": tokenizer,
        "per_image": per_image,
        "skipped": skipped,
        "skip_reasons": reasons,
    })
    return result
