"""Benchmark files, read into plain task records for the evaluators.

Each loader (``LOADERS``: coco, karpathy, jsonl, vqav2, textvqa, gqa, vizwiz, pope, mc_jsonl,
scienceqa, mmbench) reads one file format and returns a list of dicts in file order (``limit``
keeps the first N). Image paths are made absolute against ``image_folder`` (default: the
question file's folder) and, with ``check_images=True``, must exist; any problem with a file
is one :class:`~mir_jax.data.errors.DataError` line. ``question_id`` keeps the source id's type.
Each record's ``"prompt"`` is the ``text`` of LLaVA-1.5's question file (:func:`llava_text`).
The files and fields each loader reads: docs/evaluation.md.

Records (``image``: absolute path, None for text-only; MMBench: the encoded image bytes)::

    caption          {"question_id", "image", "captions": [str, ...]}
    vqa              {"question_id", "image", "question", "answers": [str, ...] ([] for a
                      test split: predictions only), "metric": "vqa" | "textvqa" | "gqa" |
                      "vizwiz", "prompt", ...extras}
    pope             {"question_id", "image", "question", "label": "yes" | "no",
                      "category": str | None}
    multiple_choice  {"question_id", "image", "question", "options": [str, ...],
                      "answer": int (0-based; None in MMBench's test split: predictions
                      only), "hint": str | None, "benchmark":
                      "scienceqa" | "mmbench" (absent for generic files)}
"""

from __future__ import annotations

import base64
import binascii
import csv
import inspect
import json
import os
import re
import sys
from collections.abc import Iterator

from mir_jax.data.errors import DataError
from mir_jax.data.sources import JsonRecords, json_lines

# -- file reading ---------------------------------------------------------------------


def _first_char(path: str) -> str:
    """The first non-whitespace character of a file ('' for an empty one)."""
    try:
        with open(path, "rb") as f:
            while True:
                chunk = f.read(4096)
                if not chunk:
                    return ""
                stripped = chunk.lstrip()
                if stripped:
                    return stripped[:1].decode("latin-1")
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e


def _parse_json(path: str):
    """A whole JSON document; ('lines', text) when it is JSON Lines instead ("Extra data")."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    try:
        return "object", json.loads(data)
    except json.JSONDecodeError as e:
        if e.msg == "Extra data":
            return "lines", data
        raise DataError(f"{path}:{e.lineno}: malformed JSON ({e.msg})") from e
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not UTF-8 text ({e.reason})") from e


def _json_lines(path: str, data: bytes) -> Iterator[tuple[dict, str]]:
    # JSON Lines in a .json file (POPE's coco_pope_*.json); messages as JsonRecords'.
    for lineno, _, obj in json_lines(path, data):
        yield obj, f"{path}:{lineno}"


def _read_object(path, what: str) -> dict:
    """A file holding one JSON object (COCO, VQA API, TextVQA, GQA, ScienceQA files)."""
    path = os.fspath(path)
    kind, obj = _parse_json(path)
    if kind != "object" or not isinstance(obj, dict):
        raise DataError(f"{path}: expected one JSON object ({what})")
    return obj


def _records(path) -> Iterator[tuple[dict, str]]:
    """(record, where) for each object of a JSONL file, a JSON array, or JSON Lines in .json.

    A malformed line anywhere stops the load before the first record; a ``.json`` file
    holding one object is one record.
    """
    path = os.fspath(path)
    if path.endswith(".jsonl") or _first_char(path) == "[":
        recs = JsonRecords(path)
        return ((recs[i], recs.where(i)) for i in range(len(recs)))
    kind, obj = _parse_json(path)
    if kind == "lines":
        return iter(list(_json_lines(path, obj)))  # parse it all first, as JsonRecords does
    if not isinstance(obj, dict):
        raise DataError(f"{path}: expected JSON Lines, a JSON array or a JSON object")
    return iter([(obj, path)])


# -- record helpers -------------------------------------------------------------------


def _folder(image_folder, path) -> str:
    return os.path.abspath(os.fspath(image_folder) if image_folder is not None
                           else os.path.dirname(os.path.abspath(os.fspath(path))))


def _image(ref, folder: str, where: str, check: bool) -> str:
    if not isinstance(ref, str) or not ref:
        raise DataError(f"{where}: image reference {ref!r} is not a path")
    path = os.path.abspath(os.path.join(folder, ref))
    if check and not os.path.isfile(path):
        raise DataError(f"{where}: image not found: {path} (image_folder {folder}; "
                        "check_images=False skips this check)")
    return path


def _need(raw: dict, key: str, where: str, types=str, what: str = ""):
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(raw).__name__}")
    if key not in raw:
        raise DataError(f"{where}: missing key {key!r}{what}")
    value = raw[key]
    if types is not None and not isinstance(value, types):
        name = types.__name__ if isinstance(types, type) else "/".join(t.__name__ for t in types)
        raise DataError(f"{where}: {key!r} should be {name}, got {type(value).__name__}")
    return value


def _str_list(value, key: str, where: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DataError(f"{where}: {key!r} should be a list of strings")
    return value


def _qid(raw: dict, index: int, keys=("question_id", "id")):
    """The record's id as the file has it (int or str), else its 0-based index."""
    for k in keys:
        if raw.get(k) is not None:
            value = raw[k]
            return value if isinstance(value, (int, str)) and not isinstance(value, bool) else str(value)
    return index


SHORT_ANSWER = "Answer the question using a single word or phrase."


VIZWIZ_INSTRUCTION = "When the provided information is insufficient, respond with 'Unanswerable'."


def llava_text(question: str, ocr: str | None = None, vizwiz: bool = False) -> str:
    """The ``text`` LLaVA-1.5's converted question files hold for a short-answer question
    (VizWiz's adds ``VIZWIZ_INSTRUCTION`` on a line of its own before the short-answer one)."""
    ocr_line = f"\nReference OCR token: {ocr}" if ocr else ""
    vizwiz_line = f"\n{VIZWIZ_INSTRUCTION}" if vizwiz else ""
    return f"{question}{ocr_line}{vizwiz_line}\n{SHORT_ANSWER}"


def _check_limit(limit):
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit should be None or an int >= 0, got {limit!r}")


def _full(out: list, limit) -> bool:
    return limit is not None and len(out) >= limit


def _unique(out: list[dict], path, key=lambda rec: rec["question_id"]) -> list[dict]:
    seen: set = set()
    for rec in out:
        k = key(rec)
        if k in seen:
            raise DataError(f"{os.fspath(path)}: question_id {rec['question_id']!r} appears twice")
        seen.add(k)
    return out


def _hint(value) -> str | None:
    return (value.strip() or None) if isinstance(value, str) else None


_OCR_PREFIX = "Reference OCR token:"


def _split_llava_text(text: str) -> tuple[str, str | None]:
    """(question, OCR tokens or None) of a LLaVA eval ``text``."""
    if text.startswith("OCR tokens: "):  # the older TextVQA prompt
        m = re.search(r"OCR tokens: (.*?)\s*Question: (.*?)\s*Short answer:", text, re.DOTALL)
        if m:
            return m.group(2).strip(), m.group(1).strip() or None
    ocr, question = None, None
    for line in text.split("\n"):
        s = line.strip()
        if s.startswith(_OCR_PREFIX):
            ocr = ocr or s[len(_OCR_PREFIX):].strip() or None
        elif question is None and s:
            question = s
    return question or "", ocr


# -- captions -------------------------------------------------------------------------


def load_coco_captions(annotation_json, image_folder=None, limit=None, check_images=True) -> list[dict]:
    """COCO captions annotations -> ``{"question_id": image id, "image", "captions"}``."""
    _check_limit(limit)
    path = os.fspath(annotation_json)
    doc = _read_object(path, "COCO captions annotations")
    images = _need(doc, "images", path, list, " (is this a COCO captions annotations file?)")
    anns = _need(doc, "annotations", path, list, " (is this a COCO captions annotations file?)")
    captions: dict = {}
    for j, ann in enumerate(anns):
        where = f"{path}: annotations[{j}]"
        image_id = _need(ann, "image_id", where, (int, str))
        captions.setdefault(image_id, []).append(_need(ann, "caption", where).strip())
    folder = _folder(image_folder, path)
    out: list[dict] = []
    for i, im in enumerate(images):
        if _full(out, limit):
            break
        where = f"{path}: images[{i}]"
        image_id = _need(im, "id", where, (int, str))
        where = f"{path}: images[{i}] (id {image_id})"
        if image_id not in captions:
            raise DataError(f"{where}: no captions in 'annotations' for this image")
        out.append({"question_id": image_id,
                    "image": _image(_need(im, "file_name", where), folder, where, check_images),
                    "captions": captions[image_id]})
    return _unique(out, path)


def load_karpathy_captions(karpathy_json, image_folder=None, split="test", limit=None,
                           check_images=True) -> list[dict]:
    """Karpathy split JSON -> caption records of ``split`` (a name, a list of names, or None: all).

    ``question_id`` = ``cocoid`` (COCO) else ``imgid``; image =
    ``image_folder/filepath/filename``.
    """
    _check_limit(limit)
    path = os.fspath(karpathy_json)
    doc = _read_object(path, "Karpathy split file")
    images = _need(doc, "images", path, list, " (is this a Karpathy dataset_*.json?)")
    splits = None if split is None else {split} if isinstance(split, str) else set(split)
    folder = _folder(image_folder, path)
    out: list[dict] = []
    present: set[str] = set()
    for i, im in enumerate(images):
        if _full(out, limit):
            break
        where = f"{path}: images[{i}]"
        im_split = _need(im, "split", where)
        present.add(im_split)
        if splits is not None and im_split not in splits:
            continue
        qid = im.get("cocoid", im.get("imgid"))
        if qid is None:
            raise DataError(f"{where}: missing key 'cocoid' or 'imgid'")
        where = f"{path}: images[{i}] (id {qid})"
        filename = _need(im, "filename", where)
        ref = os.path.join(im["filepath"], filename) if im.get("filepath") else filename
        sentences = _need(im, "sentences", where, list)
        caps = [_need(s, "raw", f"{where} sentences[{k}]").strip() for k, s in enumerate(sentences)]
        if not caps:
            raise DataError(f"{where}: no sentences")
        out.append({"question_id": qid, "image": _image(ref, folder, where, check_images),
                    "captions": caps})
    if not out and images and limit != 0:
        raise DataError(f"{path}: no images of split {split!r} (splits present: "
                        f"{', '.join(sorted(present))})")
    return _unique(out, path)


def load_caption_jsonl(path, image_folder=None, limit=None, check_images=True) -> list[dict]:
    """LLaVA-style JSONL/JSON ``{"image", "captions" | "caption", "question_id" | "id"}``."""
    _check_limit(limit)
    folder = _folder(image_folder, path)
    out: list[dict] = []
    for i, (raw, where) in enumerate(_records(path)):
        if _full(out, limit):
            break
        if "captions" in raw:
            caps = _str_list(raw["captions"], "captions", where)
        elif "caption" in raw:
            caps = [_need(raw, "caption", where)]
        else:
            raise DataError(f"{where}: missing key 'captions' (or 'caption')")
        out.append({"question_id": _qid(raw, i),
                    "image": _image(_need(raw, "image", where), folder, where, check_images),
                    "captions": [c.strip() for c in caps]})
    return _unique(out, path)


# -- VQA ------------------------------------------------------------------------------


def _vqa_annotations(annotations_json) -> tuple[str, dict[str, tuple[list[str], str | None]]]:
    """(path, {str(question_id): (the human answers, answer_type)}) of a VQA annotations file
    (ids as strings: a question file's int and the annotations' int or str agree)."""
    apath = os.fspath(annotations_json)
    adoc = _read_object(apath, "VQA annotations")
    anns = _need(adoc, "annotations", apath, list, " (is this a VQA annotations file?)")
    answers = {}
    for j, ann in enumerate(anns):
        where = f"{apath}: annotations[{j}]"
        qid = str(_need(ann, "question_id", where, (int, str)))
        human = [_need(a, "answer", f"{where} answers[{k}]")
                 for k, a in enumerate(_need(ann, "answers", where, list))]
        answers[qid] = (human, ann.get("answer_type"))
    return apath, answers


def load_vqav2(questions_json=None, annotations_json=None, image_folder=None,
               image_pattern="COCO_{split}_{image_id:012d}.jpg", limit=None,
               check_images=True, questions_jsonl=None) -> list[dict]:
    """VQAv2 questions + annotations -> ``{"question_id", "image", "question", "answers"
    (the 10 human answers), "metric": "vqa", "answer_type", "prompt"}``.

    Questions: the VQA API's ``questions_json`` (images named by ``image_pattern``) or LLaVA-1.5's
    ``questions_jsonl`` (its order, ids, images and ``text``, kept as ``prompt``).
    ``annotations_json=None`` (test-dev) gives ``answers: []``: predictions only.
    """
    _check_limit(limit)
    if (questions_json is None) == (questions_jsonl is None):
        raise DataError("load_vqav2: give questions_json (the VQA API's questions file) or questions_jsonl "
                        "(LLaVA's llava_vqav2_mscoco_*.jsonl), not both or neither")
    apath, answers = (None, None) if annotations_json is None else _vqa_annotations(annotations_json)

    def human(qid, where):
        if answers is None:
            return [], None
        if str(qid) not in answers:
            raise DataError(f"{where}: no annotation for this question in {apath}")
        found, answer_type = answers[str(qid)]
        return list(found), answer_type

    out: list[dict] = []
    if questions_jsonl is not None:
        qpath = os.fspath(questions_jsonl)
        folder = _folder(image_folder, qpath)
        for raw, where in _records(qpath):
            if _full(out, limit):
                break
            qid = _need(raw, "question_id", where, (int, str))  # its type kept: LLaVA's are ints
            where = f"{where} (question_id {qid})"
            text = _need(raw, "text", where)
            found, answer_type = human(qid, where)
            out.append({"question_id": qid,
                        "image": _image(_need(raw, "image", where), folder, where, check_images),
                        "question": _split_llava_text(text)[0], "answers": found, "metric": "vqa",
                        "answer_type": answer_type, "prompt": text})
        return _unique(out, qpath)
    qpath = os.fspath(questions_json)
    if qpath.endswith(".jsonl"):
        raise DataError(f"{qpath}: a JSONL file; LLaVA's llava_vqav2_mscoco_*.jsonl is read as questions_jsonl=")
    qdoc = _read_object(qpath, "VQA questions")
    questions = _need(qdoc, "questions", qpath, list, " (is this a VQA questions file?)")
    split = qdoc.get("data_subtype")
    if "{split" in image_pattern:
        if not isinstance(split, str):
            raise DataError(f"{qpath}: missing key 'data_subtype' (e.g. \"val2014\"), which "
                            f"names the images in {image_pattern!r}")
        split = re.sub(r"^test-dev", "test", split)  # test-dev2015's images are test2015's
    folder = _folder(image_folder, qpath)
    for i, q in enumerate(questions):
        if _full(out, limit):
            break
        where = f"{qpath}: questions[{i}]"
        qid = _need(q, "question_id", where, (int, str))
        where = f"{qpath}: questions[{i}] (question_id {qid})"
        image_id = _need(q, "image_id", where, (int, str))
        try:
            ref = image_pattern.format(split=split, image_id=int(image_id))
        except (ValueError, KeyError, IndexError) as e:
            raise DataError(f"{where}: image_pattern {image_pattern!r} does not format: {e!r}") from e
        found, answer_type = human(qid, where)
        question = _need(q, "question", where).strip()
        out.append({"question_id": qid, "image": _image(ref, folder, where, check_images),
                    "question": question, "answers": found,
                    "metric": "vqa", "answer_type": answer_type, "prompt": llava_text(question)})
    return _unique(out, qpath)


def load_textvqa(questions_jsonl, annotations_json, image_folder=None, limit=None,
                 check_images=True) -> list[dict]:
    """LLaVA's TextVQA question JSONL + TextVQA annotations -> ``{"question_id", "image",
    "question", "answers" (10), "metric": "textvqa", "ocr", "prompt"}``; either file may be
    None (no OCR line; ``answers: []``). Annotations are matched as ``eval_textvqa.py`` does.
    """
    _check_limit(limit)
    if questions_jsonl is None and annotations_json is None:
        raise DataError("load_textvqa: give a question file, an annotation file or both")
    by_id: dict[str, list[str]] | None = None
    by_image: dict[tuple[str, str], list[str]] = {}
    data: list = []
    apath = None
    if annotations_json is not None:
        apath = os.fspath(annotations_json)
        adoc = _read_object(apath, "TextVQA annotations")
        data = _need(adoc, "data", apath, list, " (is this a TextVQA_0.5.1_*.json?)")
        by_id = {}
        for j, ann in enumerate(data):
            where = f"{apath}: data[{j}]"
            qid = str(_need(ann, "question_id", where, (int, str)))
            by_id[qid] = _str_list(ann.get("answers", []), "answers", where)
            if isinstance(ann.get("image_id"), str) and isinstance(ann.get("question"), str):
                by_image[(ann["image_id"], ann["question"].lower())] = by_id[qid]
    out: list[dict] = []

    def key(rec):
        return rec["question_id"], rec["question"]

    if questions_jsonl is None:  # the annotation file alone
        folder = _folder(image_folder, apath)
        for j, ann in enumerate(data):
            if _full(out, limit):
                break
            qid = ann["question_id"]  # checked above
            where = f"{apath}: data[{j}] (question_id {qid})"
            ref = str(_need(ann, "image_id", where)) + ".jpg"
            question = _need(ann, "question", where).strip()
            out.append({"question_id": qid, "image": _image(ref, folder, where, check_images),
                        "question": question, "answers": list(by_id[str(qid)]),
                        "metric": "textvqa", "ocr": None, "prompt": llava_text(question)})
        return _unique(out, apath, key)
    qpath = os.fspath(questions_jsonl)
    folder = _folder(image_folder, qpath)
    for raw, where in _records(qpath):
        if _full(out, limit):
            break
        qid = _need(raw, "question_id", where, (int, str))
        where = f"{where} (question_id {qid})"
        text = _need(raw, "text", where)
        question, ocr = _split_llava_text(text)
        if by_id is None:
            human = []
        elif (str(qid), question.lower()) in by_image:  # eval_textvqa.py's key
            human = list(by_image[(str(qid), question.lower())])
        elif str(qid) in by_id:
            human = list(by_id[str(qid)])
        else:
            raise DataError(f"{where}: no annotation for this question in {apath} (looked up by "
                            "image id and question, as eval_textvqa.py does, and by question id)")
        out.append({"question_id": qid,
                    "image": _image(_need(raw, "image", where), folder, where, check_images),
                    "question": question, "answers": human, "metric": "textvqa", "ocr": ocr,
                    "prompt": text})
    return _unique(out, qpath, key)


def load_gqa(questions_jsonl_or_json, image_folder=None, answers_json=None, limit=None,
             check_images=True) -> list[dict]:
    """GQA -> ``{"question_id", "image", "question", "answers": [answer], "metric": "gqa",
    "prompt", "balanced"}``, from LLaVA's question JSONL with ``answers_json`` = GQA's
    ``testdev_balanced_questions.json``, or that GQA file alone.
    """
    _check_limit(limit)
    path = os.fspath(questions_jsonl_or_json)

    def gqa_questions(p, doc=None):
        doc = _read_object(p, "GQA questions {qid: {...}}") if doc is None else doc
        for qid, q in doc.items():
            if not isinstance(q, dict):
                raise DataError(f"{p}: question {qid}: expected a JSON object "
                                "(is this a GQA *_questions.json?)")
        return doc

    # GQA's own file is one {qid: {...}} object; LLaVA's is JSONL (or a JSON array).
    gqa_own = not path.endswith(".jsonl") and _first_char(path) == "{"
    if gqa_own:
        kind, obj = _parse_json(path)
        gqa_own = kind == "object" and isinstance(obj, dict) and "question_id" not in obj
    out: list[dict] = []
    if gqa_own:
        doc = gqa_questions(path, obj)
        folder = _folder(image_folder, path)
        for qid, q in doc.items():
            if _full(out, limit):
                break
            where = f"{path}: question {qid}"
            ref = str(_need(q, "imageId", where, (str, int))) + ".jpg"
            question = _need(q, "question", where).strip()
            out.append({"question_id": qid, "image": _image(ref, folder, where, check_images),
                        "question": question,
                        "answers": [str(_need(q, "answer", where, (str, int)))],
                        "metric": "gqa", "prompt": llava_text(question),
                        "balanced": q.get("isBalanced")})
        return _unique(out, path)
    if answers_json is None:
        raise DataError(f"{path}: LLaVA's GQA questions carry no answers; pass answers_json="
                        "GQA's testdev_balanced_questions.json")
    apath = os.fspath(answers_json)
    doc = gqa_questions(apath)
    folder = _folder(image_folder, path)
    for raw, where in _records(path):
        if _full(out, limit):
            break
        qid = _need(raw, "question_id", where, (int, str))
        where = f"{where} (question_id {qid})"
        text = _need(raw, "text", where)
        if str(qid) not in doc:
            raise DataError(f"{where}: no answer for this question in {apath}")
        answer = _need(doc[str(qid)], "answer", f"{apath}: question {qid}", (str, int))
        out.append({"question_id": qid,
                    "image": _image(_need(raw, "image", where), folder, where, check_images),
                    "question": _split_llava_text(text)[0], "answers": [str(answer)],
                    "metric": "gqa", "prompt": text, "balanced": doc[str(qid)].get("isBalanced")})
    return _unique(out, path)


def _vizwiz_annotations(apath: str) -> dict[str, tuple[int, dict]]:
    """{image: (index, {"answers", "question", "answer_type", "answerable"})} of a VizWiz
    annotations file (a JSON array keyed by image name). The test split's ``test.json`` has no
    answers: every entry then gets ``answers: []`` (predictions only); a file where only some
    entries lack them is refused."""
    kind, anns = _parse_json(apath)
    if kind != "object" or not isinstance(anns, list):
        raise DataError(f"{apath}: expected a JSON array of questions (is this VizWiz's val.json?)")
    test_split = bool(anns) and all(isinstance(a, dict) and "answers" not in a for a in anns)
    by_image: dict[str, tuple[int, dict]] = {}
    for j, ann in enumerate(anns):
        where = f"{apath}: [{j}]"
        image = _need(ann, "image", where)
        _need(ann, "question", where)
        answers = []
        if not test_split:
            if "answers" not in ann:
                raise DataError(f"{where}: no 'answers', though other questions of the file have them")
            answers = [_need(a, "answer", f"{where} answers[{k}]")
                       for k, a in enumerate(_need(ann, "answers", where, list))]
            if not answers:
                raise DataError(f"{where}: 'answers' is empty")
        if image in by_image:
            raise DataError(f"{where}: image {image!r} appears twice (VizWiz's scorer keys by image)")
        by_image[image] = (j, {"answers": answers, "question": ann["question"],
                               "answer_type": ann.get("answer_type"), "answerable": ann.get("answerable")})
    return by_image


def load_vizwiz(annotations_json=None, questions_jsonl=None, image_folder=None, limit=None,
                check_images=True) -> list[dict]:
    """VizWiz VQA -> ``{"question_id", "image", "image_file", "question", "answers" (as given),
    "metric": "vizwiz", "answer_type", "answerable", "prompt"}``.

    ``annotations_json``: VizWiz's ``val.json`` (alone: file order, ``question_id`` = the index);
    with ``questions_jsonl`` (LLaVA's ``llava_test.jsonl``): that file's order, ids and
    ``text``, answers matched by image name. The test split gives ``answers: []`` and
    ``answer_type``/``answerable`` None: predictions only, for the upload file.
    """
    _check_limit(limit)
    if annotations_json is None and questions_jsonl is None:
        raise DataError("load_vizwiz: give annotations_json (val.json, test.json), questions_jsonl "
                        "(LLaVA's llava_test.jsonl) or both")
    apath = None if annotations_json is None else os.fspath(annotations_json)
    by_image = {} if apath is None else _vizwiz_annotations(apath)
    out: list[dict] = []

    def record(qid, image, question, ann, prompt, folder, where):
        return {"question_id": qid, "image": _image(image, folder, where, check_images), "image_file": image,
                "question": question.strip(), "answers": ann["answers"], "metric": "vizwiz",
                "answer_type": ann["answer_type"], "answerable": ann["answerable"], "prompt": prompt}

    if questions_jsonl is None:
        folder = _folder(image_folder, apath)
        for image, (j, ann) in by_image.items():
            if _full(out, limit):
                break
            out.append(record(j, image, ann["question"], ann, llava_text(ann["question"], vizwiz=True),
                              folder, f"{apath}: [{j}] ({image})"))
        return _unique(out, apath)
    qpath = os.fspath(questions_jsonl)
    folder = _folder(image_folder, qpath)
    suffix = f"\n{VIZWIZ_INSTRUCTION}\n{SHORT_ANSWER}"
    unanswered = {"answers": [], "answer_type": None, "answerable": None}
    for raw, where in _records(qpath):
        if _full(out, limit):
            break
        qid = _need(raw, "question_id", where, (int, str))
        where = f"{where} (question_id {qid})"
        image = _need(raw, "image", where)
        text = _need(raw, "text", where)
        found = by_image.get(image) or by_image.get(os.path.basename(image))
        if found is None and apath is not None:
            raise DataError(f"{where}: no annotation for image {image!r} in {apath}")
        question = text[: -len(suffix)] if text.endswith(suffix) else _split_llava_text(text)[0]
        out.append(record(qid, image, question, found[1] if found else unanswered, text, folder, where))
    return _unique(out, qpath)


# -- POPE -----------------------------------------------------------------------------


def _pope_category(path: str) -> str | None:
    stem = os.path.splitext(os.path.basename(path))[0]
    return (stem.rsplit("pope_", 1)[1] or None) if "pope_" in stem else None


def _pope_labels(annotation_dir) -> dict[str, list[tuple[str, str, str]]]:
    """{category: [(label, image, where), ...] in file order} from eval_pope.py's
    --annotation-dir: every file there is ``coco_pope_<category>.json`` (it asserts so)."""
    folder = os.fspath(annotation_dir)
    if not os.path.isdir(folder):
        raise DataError(f"{folder}: annotation_dir is not a folder (of coco_pope_<category>.json files)")
    labels: dict[str, list[tuple[str, str, str]]] = {}
    for name in sorted(os.listdir(folder)):
        if not (name.startswith("coco_pope_") and name.endswith(".json")):
            raise DataError(f"{folder}: {name!r} is not a coco_pope_<category>.json file (eval_pope.py "
                            "reads every file of its --annotation-dir as one)")
        rows = labels[name[len("coco_pope_"):-len(".json")]] = []
        for raw, where in _records(os.path.join(folder, name)):
            label = _need(raw, "label", where).strip().lower()
            if label not in ("yes", "no"):
                raise DataError(f"{where}: label {raw['label']!r} is not 'yes' or 'no'")
            rows.append((label, _need(raw, "image", where), where))
    if not labels:
        raise DataError(f"{folder}: no coco_pope_<category>.json files")
    return labels


def load_pope(jsonl, image_folder=None, limit=None, check_images=True, annotation_dir=None) -> list[dict]:
    """POPE question lines -> ``{"question_id", "image", "question", "label", "category"}``.

    POPE's ``coco_pope_<category>.json`` carry their labels; LLaVA's ``llava_pope_test.jsonl``
    takes them from ``annotation_dir`` (eval_pope.py's ``--annotation-dir``), paired by order
    within a category as eval_pope.py pairs them (docs/evaluation.md).
    """
    _check_limit(limit)
    path = os.fspath(jsonl)
    file_category = _pope_category(path)
    folder = _folder(image_folder, path)
    labels = None if annotation_dir is None else _pope_labels(annotation_dir)
    taken: dict[str, int] = {}
    out: list[dict] = []
    for i, (raw, where) in enumerate(_records(path)):
        if _full(out, limit):
            break
        qid = _qid(raw, i, ("question_id",))
        where = f"{where} (question_id {qid})"
        category = raw.get("category")
        category = str(category) if category is not None else file_category
        if "label" in raw:
            label = _need(raw, "label", where).strip().lower()
            if label not in ("yes", "no"):
                raise DataError(f"{where}: label {raw['label']!r} is not 'yes' or 'no'")
        elif labels is None:
            raise DataError(f"{where}: missing key 'label' (LLaVA's llava_pope_test.jsonl has no labels: "
                            "pass annotation_dir=the folder of POPE's coco_pope_<category>.json files)")
        else:
            if category is None:
                raise DataError(f"{where}: missing key 'category' (eval_pope.py pairs labels per category)")
            if category not in labels:
                continue  # eval_pope.py scores only the categories it has a label file for
            k = taken[category] = taken.get(category, 0) + 1
            if k > len(labels[category]):
                raise DataError(f"{where}: question {k} of category {category!r}, but coco_pope_{category}.json "
                                f"has {len(labels[category])} labels")
            label, image, label_where = labels[category][k - 1]
            if os.path.basename(image) != os.path.basename(str(raw.get("image"))):
                raise DataError(f"{where}: question {k} of category {category!r} is for image {raw.get('image')!r} "
                                f"but {label_where} is for {image!r} (eval_pope.py pairs them by order)")
        text = _need(raw, "text", where)
        question = _split_llava_text(text)[0]
        out.append({"question_id": qid,
                    "image": _image(_need(raw, "image", where), folder, where, check_images),
                    "question": question, "label": label, "category": category,
                    "prompt": text if "\n" in text.strip() else llava_text(question)})
    return _unique(out, path)


# -- multiple choice ------------------------------------------------------------------


def _answer_index(answer, options: list[str], where: str) -> int:
    if isinstance(answer, bool) or not isinstance(answer, (int, str)):
        raise DataError(f"{where}: answer {answer!r} should be an index, a letter or an option")
    if isinstance(answer, int):
        index = answer
    else:
        s = answer.strip()
        if len(s) == 1 and "A" <= s <= "Z":
            index = ord(s) - ord("A")
        elif s in options:
            index = options.index(s)
        else:
            raise DataError(f"{where}: answer {answer!r} is neither a letter A-Z nor one of "
                            f"the options {options}")
    if not 0 <= index < len(options):
        raise DataError(f"{where}: answer {answer!r} is out of range for {len(options)} options")
    return index


def _options(raw: dict, where: str, keys=("options", "choices")) -> list[str]:
    for k in keys:
        if k in raw:
            value = raw[k]
            if not isinstance(value, list) or not value:
                raise DataError(f"{where}: {k!r} should be a non-empty list")
            return [v if isinstance(v, str) else str(v) for v in value]
    raise DataError(f"{where}: missing key {keys[0]!r} (or {keys[1]!r})")


def load_multiple_choice(path, image_folder=None, limit=None, check_images=True) -> list[dict]:
    """Generic multiple-choice JSONL/JSON -> ``{"question_id", "image" (or None), "question",
    "options", "answer" (0-based), "hint"}``."""
    _check_limit(limit)
    folder = _folder(image_folder, path)
    out: list[dict] = []
    for i, (raw, where) in enumerate(_records(path)):
        if _full(out, limit):
            break
        qid = _qid(raw, i)
        where = f"{where} (question_id {qid})"
        options = _options(raw, where)
        image = raw.get("image")
        out.append({"question_id": qid,
                    "image": None if image is None else _image(image, folder, where, check_images),
                    "question": _need(raw, "question", where).strip(), "options": options,
                    "answer": _answer_index(_need(raw, "answer", where, None), options, where),
                    "hint": _hint(raw.get("hint"))})
    return _unique(out, path)


def load_scienceqa(problems_json, image_folder=None, split="test", pid_splits=None,
                   images_only=False, limit=None, check_images=True) -> list[dict]:
    """ScienceQA problems.json -> multiple-choice records of ``split`` (``question_id`` = pid).

    ``image_folder`` holds ``<split>/<pid>/image.png`` (default: ``images/`` next to
    problems.json if present); ``pid_splits`` (pid_splits.json) sets which problems and their
    order; ``images_only=True`` keeps ScienceQA-IMG.
    """
    _check_limit(limit)
    path = os.fspath(problems_json)
    problems = _read_object(path, "ScienceQA problems {pid: {...}}")
    if image_folder is None:
        base = os.path.dirname(os.path.abspath(path))
        image_folder = os.path.join(base, "images") if os.path.isdir(os.path.join(base, "images")) else base
    folder = _folder(image_folder, path)
    if pid_splits is not None:
        spath = os.fspath(pid_splits)
        splits = _read_object(spath, "ScienceQA pid_splits {split: [pid, ...]}")
        if split not in splits:
            raise DataError(f"{spath}: no split {split!r} (splits: {', '.join(sorted(splits))})")
        pids = [str(p) for p in _need(splits, split, spath, list)]
        for pid in pids:
            if pid not in problems:
                raise DataError(f"{spath}: {split} pid {pid} is not in {path}")
    else:
        pids = [pid for pid, p in problems.items() if isinstance(p, dict) and p.get("split") == split]
        if not pids and problems:
            present = sorted({str(p.get("split")) for p in problems.values() if isinstance(p, dict)})
            raise DataError(f"{path}: no problems of split {split!r} (splits present: "
                            f"{', '.join(present)})")
    out: list[dict] = []
    for pid in pids:
        if _full(out, limit):
            break
        p = problems[pid]
        where = f"{path}: problem {pid}"
        if not isinstance(p, dict):
            raise DataError(f"{where}: expected a JSON object")
        image = p.get("image")
        if images_only and not image:
            continue
        options = _options(p, where, ("choices", "options"))
        answer = _need(p, "answer", where, int)
        ref = None
        if image:
            ref = _image(os.path.join(str(p.get("split") or split), pid, image), folder, where,
                         check_images)
        out.append({"question_id": str(pid), "image": ref,
                    "question": _need(p, "question", where).strip(), "options": options,
                    "answer": _answer_index(answer, options, where), "hint": _hint(p.get("hint")),
                    "benchmark": "scienceqa"})
    return _unique(out, path)


# -- dispatch -------------------------------------------------------------------------

MMBENCH_OPTIONS = ("A", "B", "C", "D", "E")


def _mmbench_field(row: dict, key: str) -> str | None:
    """A TSV field, None when absent, empty or pandas' "nan"."""
    value = row.get(key)
    if value is None or value.strip() in ("", "nan", "NaN"):
        return None
    return value.strip()


def load_mmbench(tsv, limit=None) -> list[dict]:
    """MMBench TSV -> multiple-choice records (see the module docstring)."""
    _check_limit(limit)
    path = os.fspath(tsv)
    if not os.path.isfile(path):
        raise DataError(f"{path}: file not found")
    csv.field_size_limit(sys.maxsize)  # one field is a whole base64 image
    out: list[dict] = []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f, delimiter="\t")
        columns = set(reader.fieldnames or ())
        missing = sorted({"index", "question", "image", "A", "B"} - columns)
        if missing:
            raise DataError(f"{path}: not an MMBench TSV: no column(s) {missing} (has {sorted(columns)})")
        for line, row in enumerate(reader, start=2):
            if _full(out, limit):
                break
            where = f"{path}:{line}"
            qid = _mmbench_field(row, "index")
            if qid is None:
                raise DataError(f"{where}: empty 'index'")
            where = f"{where} (index {qid})"
            options = [v for v in (_mmbench_field(row, k) for k in MMBENCH_OPTIONS) if v is not None]
            if len(options) < 2:
                raise DataError(f"{where}: fewer than 2 options in columns A-E")
            # The test split has no 'answer' column: predictions only, for MMBench's server.
            answer = _mmbench_field(row, "answer") if "answer" in columns else None
            if answer is None and "answer" in columns:
                raise DataError(f"{where}: empty 'answer'")
            encoded = _mmbench_field(row, "image")
            if encoded is None:
                raise DataError(f"{where}: empty 'image'")
            try:
                image = base64.b64decode(encoded, validate=True)
            except (binascii.Error, ValueError) as e:
                raise DataError(f"{where}: 'image' is not base64 ({e})") from e
            record = {"question_id": int(qid) if qid.isdigit() else qid, "image": image,
                      "question": row["question"].strip(),
                      "options": options,
                      "answer": None if answer is None else _answer_index(answer, options, where),
                      "hint": _hint(_mmbench_field(row, "hint")), "benchmark": "mmbench"}
            for key, extra in (("category", "category"), ("l2-category", "l2_category")):
                if key in columns:
                    record[extra] = _mmbench_field(row, key)
            out.append(record)
    return _unique(out, path)


LOADERS = {
    "coco": load_coco_captions,
    "karpathy": load_karpathy_captions,
    "jsonl": load_caption_jsonl,
    "vqav2": load_vqav2,
    "textvqa": load_textvqa,
    "gqa": load_gqa,
    "vizwiz": load_vizwiz,
    "pope": load_pope,
    "scienceqa": load_scienceqa,
    "mc_jsonl": load_multiple_choice,
    "mmbench": load_mmbench,
}

# The record kind each format gives (the shapes in the module docstring).
TASK_KINDS = {
    "coco": "caption", "karpathy": "caption", "jsonl": "caption",
    "vqav2": "vqa", "textvqa": "vqa", "gqa": "vqa", "vizwiz": "vqa",
    "pope": "pope",
    "scienceqa": "multiple_choice", "mc_jsonl": "multiple_choice", "mmbench": "multiple_choice",
}


def load_task(task: str, **paths) -> list[dict]:
    """Load a benchmark by format name (``LOADERS``), e.g.
    ``load_task("vqav2", questions_json=..., annotations_json=..., image_folder=...)``."""
    if task not in LOADERS:
        raise DataError(f"unknown task format {task!r}; known: {', '.join(LOADERS)}")
    loader = LOADERS[task]
    signature = inspect.signature(loader)
    try:
        signature.bind(**paths)
    except TypeError as e:
        raise DataError(f"task format {task!r}: {e}; {loader.__name__} takes "
                        f"{', '.join(signature.parameters)}") from e
    return loader(**paths)
