"""The benchmark loaders against tiny hand-written files of each real format, and bad input."""

import json
import os

import pytest
from PIL import Image

from mir_jax.data.errors import DataError
from mir_jax.evals.datasets import (
    LOADERS,
    TASK_KINDS,
    load_caption_jsonl,
    load_coco_captions,
    load_gqa,
    load_karpathy_captions,
    load_mmbench,
    load_multiple_choice,
    load_pope,
    load_scienceqa,
    load_task,
    load_textvqa,
    load_vqav2,
)


def png(path):
    """A 2x2 PNG at path (whatever its extension), folders made; returns the path as a str."""
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.new("RGB", (2, 2), (255, 0, 0)).save(path, format="PNG")
    return path


def write_json(path, obj):
    path = str(path)
    with open(path, "w") as f:
        json.dump(obj, f, indent=1)
    return path


def write_lines(path, objs):
    path = str(path)
    with open(path, "w") as f:
        for o in objs:
            f.write((o if isinstance(o, str) else json.dumps(o)) + "\n")
    return path


def one_line_error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    return msg


# -- captions -------------------------------------------------------------------------


def test_coco_captions(tmp_path):
    img = tmp_path / "val2014"
    a = png(img / "COCO_val2014_000000000042.jpg")
    b = png(img / "COCO_val2014_000000000007.jpg")
    ann = write_json(tmp_path / "captions_val2014.json", {
        "info": {}, "licenses": [],
        "images": [{"id": 42, "file_name": "COCO_val2014_000000000042.jpg", "height": 2, "width": 2},
                   {"id": 7, "file_name": "COCO_val2014_000000000007.jpg", "height": 2, "width": 2}],
        "annotations": [{"image_id": 7, "id": 1, "caption": "A red square. "},
                        {"image_id": 42, "id": 2, "caption": "A tiny image.\n"},
                        {"image_id": 999, "id": 3, "caption": "not listed"},
                        {"image_id": 7, "id": 4, "caption": "Red pixels"}],
    })
    assert load_coco_captions(ann, str(img)) == [
        {"question_id": 42, "image": a, "captions": ["A tiny image."]},
        {"question_id": 7, "image": b, "captions": ["A red square.", "Red pixels"]},
    ]
    assert load_coco_captions(ann, str(img), limit=1) == [
        {"question_id": 42, "image": a, "captions": ["A tiny image."]}]


def test_karpathy_coco_and_flickr(tmp_path):
    a = png(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    b = png(tmp_path / "train2014" / "COCO_train2014_000000000009.jpg")
    c = png(tmp_path / "val2014" / "COCO_val2014_000000000005.jpg")
    def sent(raw):
        return {"tokens": raw.lower().split(), "raw": raw, "imgid": 0, "sentid": 0}
    coco = write_json(tmp_path / "dataset_coco.json", {"dataset": "coco", "images": [
        {"filepath": "val2014", "filename": "COCO_val2014_000000000042.jpg", "split": "test",
         "imgid": 0, "cocoid": 42, "sentids": [0, 1], "sentences": [sent("A dog."), sent("A cat .")]},
        {"filepath": "train2014", "filename": "COCO_train2014_000000000009.jpg",
         "split": "restval", "imgid": 1, "cocoid": 9, "sentids": [2], "sentences": [sent("Sky.")]},
        {"filepath": "val2014", "filename": "COCO_val2014_000000000005.jpg", "split": "test",
         "imgid": 2, "cocoid": 5, "sentids": [3], "sentences": [sent("Grass")]},
    ]})
    assert load_karpathy_captions(coco, str(tmp_path)) == [
        {"question_id": 42, "image": a, "captions": ["A dog.", "A cat ."]},
        {"question_id": 5, "image": c, "captions": ["Grass"]},
    ]
    assert load_karpathy_captions(coco, str(tmp_path), split=("train", "restval")) == [
        {"question_id": 9, "image": b, "captions": ["Sky."]}]
    msg = one_line_error(load_karpathy_captions, coco, str(tmp_path), split="tset")
    assert "no images of split 'tset'" in msg and "restval, test" in msg

    f = png(tmp_path / "flickr" / "1000092795.jpg")
    flickr = write_json(tmp_path / "dataset_flickr30k.json", {"dataset": "flickr30k", "images": [
        {"filename": "1000092795.jpg", "split": "test", "imgid": 3, "sentids": [0],
         "sentences": [sent("Two men.")]},
        {"filename": "10002456.jpg", "split": "train", "imgid": 4, "sentids": [1],
         "sentences": [sent("Workers.")]},
    ]})
    assert load_karpathy_captions(flickr, str(tmp_path / "flickr")) == [
        {"question_id": 3, "image": f, "captions": ["Two men."]}]


def test_caption_jsonl_and_json_array(tmp_path):
    a, b = png(tmp_path / "a.png"), png(tmp_path / "sub" / "b.png")
    rows = [{"id": "x1", "image": "a.png", "captions": ["one", "two "]},
            {"image": "sub/b.png", "caption": "three"},
            {"question_id": 5, "image": a, "caption": "absolute path"}]
    expected = [{"question_id": "x1", "image": a, "captions": ["one", "two"]},
                {"question_id": 1, "image": b, "captions": ["three"]},  # the index, an int
                {"question_id": 5, "image": a, "captions": ["absolute path"]}]
    # image_folder defaults to the file's folder.
    assert load_caption_jsonl(write_lines(tmp_path / "caps.jsonl", rows)) == expected
    assert load_caption_jsonl(write_json(tmp_path / "caps.json", rows)) == expected
    assert load_task("jsonl", path=str(tmp_path / "caps.jsonl"), limit=2) == expected[:2]


# -- VQA ------------------------------------------------------------------------------

ANSWERS_42 = ["red", "red", "red", "pink", "red", "red", "red", "maroon", "red", "red"]
ANSWERS_7 = ["2", "2", "two", "2", "2", "3", "2", "2", "2", "2"]


def vqav2_files(tmp_path, drop_annotation=False):
    a = png(tmp_path / "val2014" / "COCO_val2014_000000000042.jpg")
    b = png(tmp_path / "val2014" / "COCO_val2014_000000000007.jpg")
    q = write_json(tmp_path / "v2_OpenEnded_mscoco_val2014_questions.json", {
        "info": {}, "task_type": "Open-Ended", "data_type": "mscoco", "license": {},
        "data_subtype": "val2014",
        "questions": [{"image_id": 42, "question": "What color is it?", "question_id": 42000},
                      {"image_id": 7, "question": "How many? ", "question_id": 7001}]})
    def ann(qid, image_id, answers, mc, answer_type):
        return {"question_id": qid, "image_id": image_id, "question_type": "what",
                "answer_type": answer_type, "multiple_choice_answer": mc,
                "answers": [{"answer": x, "answer_confidence": "yes", "answer_id": k + 1}
                            for k, x in enumerate(answers)]}
    anns = [ann(42000, 42, ANSWERS_42, "red", "other")]
    if not drop_annotation:
        anns.append(ann(7001, 7, ANSWERS_7, "2", "number"))
    an = write_json(tmp_path / "v2_mscoco_val2014_annotations.json", {
        "info": {}, "license": {}, "data_subtype": "val2014", "data_type": "mscoco",
        "annotations": anns})
    return q, an, a, b


def test_vqav2(tmp_path):
    q, an, a, b = vqav2_files(tmp_path)
    expected = [
        {"question_id": 42000, "image": a, "question": "What color is it?",
         "answers": ANSWERS_42, "metric": "vqa", "answer_type": "other",
         "prompt": "What color is it?\n" + SHORT},  # as llava_vqav2_mscoco_*.jsonl's text
        {"question_id": 7001, "image": b, "question": "How many?",
         "answers": ANSWERS_7, "metric": "vqa", "answer_type": "number",
         "prompt": "How many?\n" + SHORT},
    ]
    assert load_vqav2(q, an, str(tmp_path / "val2014")) == expected
    assert load_task("vqav2", questions_json=q, annotations_json=an,
                     image_folder=str(tmp_path / "val2014"), limit=1) == expected[:1]
    # Test-dev: no annotations, no answers.
    assert [r["answers"] for r in load_vqav2(q, None, str(tmp_path / "val2014"))] == [[], []]


def test_vqav2_question_without_annotation(tmp_path):
    q, an, _, _ = vqav2_files(tmp_path, drop_annotation=True)
    msg = one_line_error(load_vqav2, q, an, str(tmp_path / "val2014"))
    assert "question_id 7001" in msg and "no annotation" in msg and an in msg and q in msg
    # Only the first N questions are needed.
    assert len(load_vqav2(q, an, str(tmp_path / "val2014"), limit=1)) == 1


SHORT = "Answer the question using a single word or phrase."
TEXTVQA_10 = ["nikon"] * 9 + ["nikon camera"]
TEXTVQA_10B = ["stop"] * 10


def textvqa_annotations(tmp_path):
    def item(qid, image_id, question, answers):
        return {"question": question, "image_id": image_id, "image_classes": ["Camera"],
                "flickr_original_url": "", "flickr_300k_url": "", "image_width": 2,
                "image_height": 2, "answers": answers, "question_tokens": question.split(),
                "question_id": qid, "set_name": "val"}
    return write_json(tmp_path / "TextVQA_0.5.1_val.json", {
        "dataset_type": "val", "dataset_name": "textvqa", "dataset_version": "0.5.1",
        "data": [item(34602, "003a8ae2ef43b901", "what is the brand of this camera?", TEXTVQA_10),
                 item(34603, "0054c91397f2fe05", "what does the sign say?", TEXTVQA_10B)]})


def test_textvqa(tmp_path):
    img = tmp_path / "train_images"
    a, b = png(img / "003a8ae2ef43b901.jpg"), png(img / "0054c91397f2fe05.jpg")
    text_a = ("what is the brand of this camera?\nReference OCR token: dakota, digital, nikon\n"
              "Answer the question using a single word or phrase.")
    text_b = "what does the sign say?\nAnswer the question using a single word or phrase."
    qs = write_lines(tmp_path / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": 34602, "image": "003a8ae2ef43b901.jpg", "text": text_a, "category": "default"},
        {"question_id": 34603, "image": "0054c91397f2fe05.jpg", "text": text_b, "category": "default"}])
    an = textvqa_annotations(tmp_path)
    assert load_textvqa(qs, an, str(img)) == [
        {"question_id": 34602, "image": a, "question": "what is the brand of this camera?",
         "answers": TEXTVQA_10, "metric": "textvqa", "ocr": "dakota, digital, nikon", "prompt": text_a},
        {"question_id": 34603, "image": b, "question": "what does the sign say?",
         "answers": TEXTVQA_10B, "metric": "textvqa", "ocr": None, "prompt": text_b},
    ]
    # The annotation file alone: the prompt is the question and the instruction, no OCR line.
    assert load_textvqa(None, an, str(img), limit=1) == [
        {"question_id": 34602, "image": a, "question": "what is the brand of this camera?",
         "answers": TEXTVQA_10, "metric": "textvqa", "ocr": None,
         "prompt": "what is the brand of this camera?\n" + SHORT}]


def test_textvqa_llava_file_ids_are_image_ids(tmp_path):
    # LLaVA's llava_textvqa_val_v051_ocr.jsonl: question_id is the *image* id (two questions
    # can share it) and the question is capitalized; eval_textvqa.py finds the annotation by
    # (image id, question lowercased), and so must the loader.
    img = tmp_path / "train_images"
    a = png(img / "003a8ae2ef43b901.jpg")
    an = write_json(tmp_path / "TextVQA_0.5.1_val.json", {"data": [
        {"question_id": 1, "image_id": "003a8ae2ef43b901", "question": "what is the brand of this camera?",
         "answers": TEXTVQA_10},
        {"question_id": 2, "image_id": "003a8ae2ef43b901", "question": "what does the sign say?",
         "answers": TEXTVQA_10B}]})
    text_1 = "What does the sign say?\nReference OCR token: STOP\n" + SHORT
    text_2 = "What is the brand of this camera?\nReference OCR token: DAKOTA, DIGITAL\n" + SHORT
    qs = write_lines(tmp_path / "llava_textvqa_val_v051_ocr.jsonl", [
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg", "text": text_1},
        {"question_id": "003a8ae2ef43b901", "image": "003a8ae2ef43b901.jpg", "text": text_2}])
    recs = load_textvqa(qs, an, str(img))
    assert [(r["question_id"], r["question"], r["answers"], r["ocr"], r["prompt"]) for r in recs] == [
        ("003a8ae2ef43b901", "What does the sign say?", TEXTVQA_10B, "STOP", text_1),
        ("003a8ae2ef43b901", "What is the brand of this camera?", TEXTVQA_10, "DAKOTA, DIGITAL", text_2)]
    assert recs[0]["image"] == recs[1]["image"] == a


def test_gqa_llava_jsonl_and_gqa_json(tmp_path):
    img = tmp_path / "images"
    a, b = png(img / "n161313.jpg"), png(img / "n288870.jpg")
    gqa = write_json(tmp_path / "testdev_balanced_questions.json", {
        "201307251": {"semantic": [], "entailed": [], "equivalent": ["201307251"],
                      "question": "Is it overcast?", "imageId": "n161313", "isBalanced": True,
                      "groups": {"global": None, "local": "13-sky_dark"}, "answer": "no",
                      "semanticStr": "", "annotations": {}, "types": {}, "fullAnswer": "No, it is clear."},
        "20968379": {"question": "Do the shorts have dark color?", "imageId": "n288870",
                     "answer": "yes", "isBalanced": True},
    })
    text_a = "Is it overcast?\nAnswer the question using a single word or phrase."
    text_b = "Do the shorts have dark color?\nAnswer the question using a single word or phrase."
    llava = write_lines(tmp_path / "llava_gqa_testdev_balanced.jsonl", [
        {"question_id": "20968379", "image": "n288870.jpg", "text": text_b, "category": "default"},
        {"question_id": "201307251", "image": "n161313.jpg", "text": text_a, "category": "default"}])
    assert load_gqa(llava, str(img), answers_json=gqa) == [
        {"question_id": "20968379", "image": b, "question": "Do the shorts have dark color?",
         "answers": ["yes"], "metric": "gqa", "prompt": text_b, "balanced": True},
        {"question_id": "201307251", "image": a, "question": "Is it overcast?",
         "answers": ["no"], "metric": "gqa", "prompt": text_a, "balanced": True},
    ]
    # GQA's own file: its keys are strings; the prompt is LLaVA's form.
    assert load_gqa(gqa, str(img)) == [
        {"question_id": "201307251", "image": a, "question": "Is it overcast?",
         "answers": ["no"], "metric": "gqa", "prompt": text_a, "balanced": True},
        {"question_id": "20968379", "image": b, "question": "Do the shorts have dark color?",
         "answers": ["yes"], "metric": "gqa", "prompt": text_b, "balanced": True},
    ]
    assert "pass answers_json" in one_line_error(load_gqa, llava, str(img))


# -- POPE -----------------------------------------------------------------------------


def test_pope(tmp_path):
    img = tmp_path / "val2014"
    a = png(img / "COCO_val2014_000000310196.jpg")
    b = png(img / "COCO_val2014_000000210789.jpg")
    # As in the POPE repo: JSON Lines in a .json file.
    pope = write_lines(tmp_path / "coco_pope_adversarial.json", [
        {"question_id": 1, "image": "COCO_val2014_000000310196.jpg",
         "text": "Is there a snowboard in the image?", "label": "yes"},
        {"question_id": 2, "image": "COCO_val2014_000000210789.jpg",
         "text": "Is there a dining table in the image?", "label": "no"}])
    assert load_pope(pope, str(img)) == [
        {"question_id": 1, "image": a, "question": "Is there a snowboard in the image?",
         "label": "yes", "category": "adversarial",
         "prompt": "Is there a snowboard in the image?\n" + SHORT},  # llava_pope_test.jsonl's form
        {"question_id": 2, "image": b, "question": "Is there a dining table in the image?",
         "label": "no", "category": "adversarial",
         "prompt": "Is there a dining table in the image?\n" + SHORT},
    ]
    # A "category" field wins; a file name without "pope_" gives no category.
    mixed = write_lines(tmp_path / "questions.jsonl", [
        {"question_id": 3, "image": "COCO_val2014_000000310196.jpg",
         "text": "Is there a person in the image?", "label": "Yes", "category": "popular"},
        {"question_id": 4, "image": "COCO_val2014_000000210789.jpg",
         "text": "Is there a cup in the image?", "label": "no"}])
    assert load_task("pope", jsonl=mixed, image_folder=str(img)) == [
        {"question_id": 3, "image": a, "question": "Is there a person in the image?",
         "label": "yes", "category": "popular", "prompt": "Is there a person in the image?\n" + SHORT},
        {"question_id": 4, "image": b, "question": "Is there a cup in the image?",
         "label": "no", "category": None, "prompt": "Is there a cup in the image?\n" + SHORT},
    ]
    no_label = write_lines(tmp_path / "llava_pope_test.jsonl", [
        {"question_id": 0, "image": "COCO_val2014_000000310196.jpg", "text": "Is there a cat?",
         "category": "random"}])
    msg = one_line_error(load_pope, no_label, str(img))
    assert f"{no_label}:1" in msg and "missing key 'label'" in msg


# -- multiple choice ------------------------------------------------------------------


def test_multiple_choice(tmp_path):
    a = png(tmp_path / "imgs" / "q1.png")
    path = write_lines(tmp_path / "mc.jsonl", [
        {"question_id": 1, "image": "q1.png", "question": "Which color?",
         "options": ["blue", "red", "green"], "answer": 1, "hint": "Look closely."},
        {"id": "b", "question": "2 + 2 = ?", "choices": ["3", "4"], "answer": "B", "hint": ""},
        {"question": "Capital of France?", "options": ["Rome", "Paris"], "answer": "Paris"}])
    assert load_multiple_choice(path, str(tmp_path / "imgs")) == [
        {"question_id": 1, "image": a, "question": "Which color?",
         "options": ["blue", "red", "green"], "answer": 1, "hint": "Look closely."},
        {"question_id": "b", "image": None, "question": "2 + 2 = ?", "options": ["3", "4"],
         "answer": 1, "hint": None},
        {"question_id": 2, "image": None, "question": "Capital of France?",
         "options": ["Rome", "Paris"], "answer": 1, "hint": None},
    ]
    bad = write_lines(tmp_path / "bad_mc.jsonl", [
        {"id": 1, "question": "?", "options": ["x", "y"], "answer": "E"}])
    msg = one_line_error(load_multiple_choice, bad)
    assert f"{bad}:1" in msg and "out of range for 2 options" in msg


def test_scienceqa(tmp_path):
    root = tmp_path / "scienceqa"
    a = png(root / "images" / "test" / "5" / "image.png")
    def problem(question, choices, answer, hint, image, split):
        return {"question": question, "choices": choices, "answer": answer, "hint": hint,
                "image": image, "task": "closed choice", "grade": "grade2", "subject": "natural science",
                "topic": "t", "category": "c", "skill": "s", "lecture": "", "solution": "",
                "split": split}
    os.makedirs(root, exist_ok=True)
    problems = write_json(root / "problems.json", {
        "1": problem("Which is a mammal?", ["frog", "dog"], 1, "", None, "train"),
        "5": problem("Which state is highlighted?", ["Ohio", "Utah", "Iowa"], 2,
                     "This map shows the US.", "image.png", "test"),
        "9": problem("Which word is longer?", ["cat", "horse"], 1, "", None, "test"),
    })
    pid_splits = write_json(root / "pid_splits.json", {"train": ["1"], "test": ["9", "5"]})
    rec5 = {"question_id": "5", "image": a, "question": "Which state is highlighted?",
            "options": ["Ohio", "Utah", "Iowa"], "answer": 2, "hint": "This map shows the US.",
            "benchmark": "scienceqa"}
    rec9 = {"question_id": "9", "image": None, "question": "Which word is longer?",
            "options": ["cat", "horse"], "answer": 1, "hint": None, "benchmark": "scienceqa"}
    # Default image_folder: images/ next to problems.json.
    assert load_scienceqa(problems) == [rec5, rec9]
    assert load_scienceqa(problems, pid_splits=pid_splits) == [rec9, rec5]
    assert load_scienceqa(problems, str(root / "images"), images_only=True) == [rec5]
    assert load_task("scienceqa", problems_json=problems, split="train") == [
        {"question_id": "1", "image": None, "question": "Which is a mammal?",
         "options": ["frog", "dog"], "answer": 1, "hint": None, "benchmark": "scienceqa"}]


# -- bad input ------------------------------------------------------------------------


def _mmbench_tsv(path, rows, columns=("index", "question", "hint", "A", "B", "C", "D", "answer",
                                        "category", "image", "source", "l2-category", "comment", "split")):
    """An MMBench-layout TSV as pandas' DataFrame.to_csv(sep="\t") writes it (quoting minimal,
    a missing value an empty field)."""
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, delimiter="\t", lineterminator="\n")
        w.writerow(columns)
        for r in rows:
            w.writerow([r.get(c, "") for c in columns])
    return str(path)


def _png_base64(colour) -> tuple[str, bytes]:
    import base64
    import io

    buf = io.BytesIO()
    Image.new("RGB", (3, 2), colour).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode(), buf.getvalue()


def test_mmbench_tsv(tmp_path):
    import numpy as np

    from mir_jax.data.images import load_image

    red, red_bytes = _png_base64((255, 0, 0))
    blue, _ = _png_base64((0, 0, 255))
    rows = [
        # Three options (D empty), a hint with a newline and a tab inside quotes, answer C.
        {"index": "101", "question": " What colour is it? ", "hint": "Look\tclosely.\nIt is bright.",
         "A": "blue", "B": "green", "C": "red", "D": "", "answer": "C", "category": "attribute",
         "image": red, "l2-category": "fine-grained perception"},
        # Four options, no hint (pandas writes NaN as an empty field, or as "nan").
        {"index": "205", "question": "Which is it?", "hint": "nan", "A": "1", "B": "2", "C": "3",
         "D": "4", "answer": "A", "category": "counting", "image": blue, "l2-category": ""},
    ]
    path = _mmbench_tsv(tmp_path / "MMBench_DEV_EN.tsv", rows)
    recs = load_mmbench(path)
    assert [r["question_id"] for r in recs] == [101, 205]  # ints, as pandas reads them for LLaVA
    a, b = recs
    assert (a["question"], a["options"], a["answer"]) == ("What colour is it?", ["blue", "green", "red"], 2)
    assert a["hint"] == "Look\tclosely.\nIt is bright." and b["hint"] is None
    assert (b["options"], b["answer"]) == (["1", "2", "3", "4"], 0)
    assert (a["category"], a["l2_category"], b["l2_category"]) == ("attribute", "fine-grained perception", None)
    assert a["image"] == red_bytes  # the encoded file, byte for byte
    pixels = np.asarray(load_image(a["image"]))
    assert pixels.shape == (2, 3, 3) and (pixels == [255, 0, 0]).all()
    assert load_task("mmbench", tsv=path, limit=1) == [a]
    assert TASK_KINDS["mmbench"] == "multiple_choice"

    # The test split has no 'answer' column: records without answers (predictions only).
    test_split = _mmbench_tsv(tmp_path / "test.tsv", rows, columns=("index", "question", "hint", "A", "B", "image"))
    assert [(r["question_id"], r["options"], r["answer"]) for r in load_mmbench(test_split)] == [
        (101, ["blue", "green"], None), (205, ["1", "2"], None)]
    # One line for each kind of damage.
    no_answer = _mmbench_tsv(tmp_path / "no_answer.tsv", [dict(rows[0], answer="")])
    assert "no_answer.tsv:2 (index 101): empty 'answer'" in one_line_error(load_mmbench, no_answer)
    other = _mmbench_tsv(tmp_path / "other.tsv", rows, columns=("id", "text"))
    assert "not an MMBench TSV: no column(s) ['A', 'B', 'image', 'index', 'question']" in one_line_error(load_mmbench, other)
    bad = _mmbench_tsv(tmp_path / "bad.tsv", [dict(rows[0], image="not base64!")])
    assert "bad.tsv:2 (index 101): 'image' is not base64" in one_line_error(load_mmbench, bad)
    wrong = _mmbench_tsv(tmp_path / "wrong.tsv", [dict(rows[0], answer="D")])
    assert "out of range for 3 options" in one_line_error(load_mmbench, wrong)
    twice = _mmbench_tsv(tmp_path / "twice.tsv", [rows[0], rows[0]])
    assert "question_id 101 appears twice" in one_line_error(load_mmbench, twice)
    assert "file not found" in one_line_error(load_mmbench, tmp_path / "none.tsv")


def test_missing_files(tmp_path):
    missing = str(tmp_path / "nope.json")
    for fn, args in [(load_coco_captions, (missing,)), (load_pope, (str(tmp_path / "x.jsonl"),)),
                     (load_vqav2, (missing, missing)), (load_scienceqa, (missing,)),
                     (load_multiple_choice, (missing,))]:
        msg = one_line_error(fn, *args)
        assert msg.startswith("cannot read") and str(tmp_path) in msg, msg


def test_malformed_json(tmp_path):
    good = {"question_id": 1, "image": "a.png", "text": "Is there a cat?", "label": "no"}
    for name in ("coco_pope_random.jsonl", "coco_pope_random.json"):
        path = write_lines(tmp_path / name, [good, '{"question_id": 2, "image": '])
        msg = one_line_error(load_pope, path, check_images=False)
        assert msg.startswith(f"{path}:2: malformed JSON"), msg
    path = str(tmp_path / "captions.json")
    with open(path, "w") as f:
        f.write('{"images": [],\n "annotations": [,]}')
    assert one_line_error(load_coco_captions, path).startswith(f"{path}:2: malformed JSON")


def test_missing_key_and_missing_image(tmp_path):
    path = write_lines(tmp_path / "mc.jsonl", [
        {"id": 1, "question": "?", "options": ["x", "y"], "answer": 0},
        {"id": 2, "options": ["x", "y"], "answer": 0}])
    assert one_line_error(load_multiple_choice, path) == f"{path}:2 (question_id 2): missing key 'question'"

    png(tmp_path / "here.png")
    caps = write_lines(tmp_path / "caps.jsonl", [{"image": "here.png", "caption": "ok"},
                                                 {"image": "gone.png", "caption": "lost"}])
    msg = one_line_error(load_caption_jsonl, caps)
    assert f"{caps}:2" in msg and "image not found" in msg and str(tmp_path / "gone.png") in msg
    assert [r["image"] for r in load_caption_jsonl(caps, check_images=False)] == [
        str(tmp_path / "here.png"), str(tmp_path / "gone.png")]

    dup = write_lines(tmp_path / "dup.jsonl", [{"id": 1, "image": "here.png", "caption": "a"},
                                               {"id": 1, "image": "here.png", "caption": "b"}])
    assert "question_id 1 appears twice" in one_line_error(load_caption_jsonl, dup)


def test_load_task_names(tmp_path):
    msg = one_line_error(load_task, "okvqa", path="x")
    assert "unknown task format 'okvqa'" in msg
    for name in ("coco", "karpathy", "jsonl", "vqav2", "textvqa", "gqa", "pope", "scienceqa",
                 "mc_jsonl", "mmbench"):
        assert name in msg and name in LOADERS and name in TASK_KINDS
    msg = one_line_error(load_task, "pope", path="x.jsonl")
    assert "'pope'" in msg and "jsonl, image_folder" in msg
