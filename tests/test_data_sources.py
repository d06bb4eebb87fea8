"""Every source against fixture files written here, including every bad-input case."""

import json
import logging
import os

import numpy as np
import pytest
from PIL import Image

from mir_jax.data import (
    BadSampleFractionError,
    ByteTokenizer,
    CaptionSource,
    DataError,
    ImageConfig,
    InterleavedSource,
    LlavaSource,
    TextSource,
    TFDSSource,
    make_eval_iterator,
    story_text,
)
from mir_jax.data.images import load_and_preprocess, normalize

RED, BLUE = (255, 0, 0), (0, 0, 255)


def write_images(folder):
    os.makedirs(folder, exist_ok=True)
    Image.new("RGB", (12, 6), RED).save(os.path.join(folder, "good.png"))
    Image.new("RGB", (16, 16), BLUE).save(os.path.join(folder, "good.jpg"), quality=95)
    with open(os.path.join(folder, "garbage.jpg"), "wb") as f:
        f.write(b"definitely not an image" * 10)
    with open(os.path.join(folder, "good.jpg"), "rb") as f:
        data = f.read()
    with open(os.path.join(folder, "truncated.jpg"), "wb") as f:
        f.write(data[: len(data) // 2])


def conv(q, a):
    return [{"from": "human", "value": q}, {"from": "gpt", "value": a}]


LLAVA_RECORDS = [
    {"id": "ok_image", "image": "good.png", "conversations": conv("<image>\nWhat?", "Red.")},
    {"id": "ok_text", "conversations": conv("Hi?", "Hello.")},
    {"id": "missing", "image": "nope.png", "conversations": conv("<image>\nWhat?", "X.")},
    {"id": "garbage", "image": "garbage.jpg", "conversations": conv("<image>\nWhat?", "X.")},
    {"id": "truncated", "image": "truncated.jpg", "conversations": conv("<image>\nWhat?", "X.")},
    {"id": "empty", "image": "good.png", "conversations": []},
    {"id": "tag_no_image", "conversations": conv("<image>\nWhat?", "X.")},
    {"id": "image_no_tag", "image": "good.png", "conversations": conv("What?", "X.")},
    {"id": "too_long", "conversations": conv("Hi?", "word " * 200)},
]
EXPECTED_REASONS = {"missing_image": 1, "corrupt_image": 2, "empty_conversation": 1,
                    "image_tag_without_image": 1, "image_without_tag": 1, "too_long": 1}


@pytest.fixture()
def llava_dir(tmp_path):
    write_images(tmp_path / "img")
    path = tmp_path / "llava.json"
    path.write_text(json.dumps(LLAVA_RECORDS, indent=1))
    return tmp_path


def eval_iter(sources, **cfg):
    config = {"sources": sources, "num_threads": 0, **cfg}
    return make_eval_iterator(config, tokenizer=ByteTokenizer(), image_size=8,
                              num_image_tokens=2, batch_size=4, seq_len=400, num_samples=None)


def test_llava_bad_samples_are_counted_not_fatal(llava_dir, caplog):
    src = {"type": "llava", "path": str(llava_dir / "llava.json"),
           "image_folder": str(llava_dir / "img"), "name": "llava"}
    it = eval_iter([src], max_bad_fraction=1.0, log_first_bad=3)
    with caplog.at_level(logging.WARNING, logger="mir_jax.data"):
        batches = list(it)
    mask = np.concatenate([b["attention_mask"] for b in batches])
    assert (mask.sum(1) > 0).sum() == 2  # the two good samples made it through
    report = it.bad_samples["llava"]
    assert report["seen"] == 9 and report["bad"] == 7
    assert report["reasons"] == EXPECTED_REASONS
    logged = [r.getMessage() for r in caplog.records]
    assert len(logged) == 3  # only the first few are logged
    assert "llava.json[2]" in logged[0] and "missing" in logged[0] and "missing_image" in logged[0]
    # The image-bearing good row has its image in slot 0; the text-only row has none.
    first = batches[0]
    assert first["image_mask"][:2, 0].tolist() == [True, False]
    assert np.all(first["pixel_values"][1] == 0)


def test_bad_fraction_stops_with_source_and_commonest_reason(llava_dir):
    src = {"type": "llava", "path": str(llava_dir / "llava.json"),
           "image_folder": str(llava_dir / "img"), "name": "my_llava"}
    it = eval_iter([src], max_bad_fraction=0.5, bad_min_seen=1000)
    with pytest.raises(BadSampleFractionError, match=r"'my_llava'.*7 of 9.*corrupt_image \(2"):
        list(it)


def test_bad_fraction_checked_during_the_stream(llava_dir):
    # With min_seen=3 the check fires as soon as 3 samples are seen and > 30% are bad.
    src = {"type": "llava", "path": str(llava_dir / "llava.json"),
           "image_folder": str(llava_dir / "img"), "name": "s", "max_bad_fraction": 0.3}
    it = eval_iter([src], bad_min_seen=3)
    with pytest.raises(BadSampleFractionError, match=r"'s': 1 of 3 samples failed.*missing_image"):
        next(it)


def test_malformed_jsonl_names_file_and_line(tmp_path):
    path = tmp_path / "caps.jsonl"
    path.write_text('{"image": "a.png", "caption": "x"}\n\n{"image": "b.png", "caption": \n')
    with pytest.raises(DataError, match=r"caps\.jsonl:3: malformed JSON"):
        CaptionSource(str(path))
    path2 = tmp_path / "conv.json"
    path2.write_text('[\n {"id": 1},\n {"id": 2,,}\n]')
    with pytest.raises(DataError, match=r"conv\.json:3: malformed JSON"):
        LlavaSource(str(path2))


def test_caption_source_and_record_lines(tmp_path):
    write_images(tmp_path)
    path = tmp_path / "caps.jsonl"
    path.write_text('{"image": "good.png", "caption": "red"}\n\n{"image": "good.jpg", "caption": "blue"}\n')
    src = CaptionSource(str(path), str(tmp_path))
    assert len(src) == 2
    rec = src[1]
    assert rec["kind"] == "caption" and rec["caption"] == "blue"
    assert rec["images"] == [str(tmp_path / "good.jpg")]
    assert rec["file"].endswith("caps.jsonl:3")  # blank line 2 skipped, line numbers kept


def test_interleaved_layouts(tmp_path):
    lines = [
        {"segments": [{"text": "A"}, {"image": "x.png"}, {"text": "B"}]},
        {"texts": ["A", None, "B"], "images": [None, "x.png", None]},
        {"text_list": ["A", "B"], "image_info": [{"image_name": "x.png", "matched_text_index": 1}]},
    ]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines))
    src = InterleavedSource(str(path), "/imgs")
    want_images = ["/imgs/x.png"]
    assert src[0]["segments"] == [{"text": "A"}, {"image": 0}, {"text": "B"}]
    assert src[1]["segments"] == [{"text": "A"}, {"image": 0}, {"text": "B"}]
    assert src[2]["segments"] == [{"text": "A"}, {"image": 0}, {"text": " B"}]
    assert all(src[i]["images"] == want_images for i in range(3))


def test_text_sources_story_txt_jsonl(tmp_path):
    (tmp_path / "a.story").write_text("First para.\n\nSecond para.\n\n@highlight\n\nSummary\n\n@highlight\n\nMore")
    (tmp_path / "b.txt").write_text("  plain text  \n")
    (tmp_path / "c.jsonl").write_text('{"text": "one"}\n{"text": "two"}\n{"nottext": 1}\n')
    (tmp_path / "d.story").write_text("@highlight\n\nonly highlights")
    (tmp_path / "ignored.csv").write_text("x")
    src = TextSource(str(tmp_path))
    texts = [src[i].get("text") for i in range(len(src))]
    assert texts == ["First para.\n\nSecond para.", "plain text", "one", "two", None, None]
    assert src[4]["reason"] == "bad_record" and src[4]["file"].endswith("c.jsonl:3")
    assert src[5]["reason"] == "empty_text"
    assert story_text("x @highlight y") == "x"


def test_text_source_through_pipeline_truncates_long_documents(tmp_path):
    (tmp_path / "t.jsonl").write_text(json.dumps({"text": "abcdefghij" * 10}) + "\n")
    it = make_eval_iterator({"sources": [{"type": "text", "path": str(tmp_path / "t.jsonl")}],
                             "num_threads": 0}, tokenizer=ByteTokenizer(), image_size=8,
                            num_image_tokens=2, batch_size=1, seq_len=16, num_samples=None)
    (b,) = list(it)
    # [bos] + the first 15 bytes, no eos: truncated to exactly seq_len.
    assert b["input_ids"][0].tolist() == [1] + [ord(c) + 4 for c in "abcdefghijabcde"]
    assert b["labels"][0].tolist() == [-100] + [ord(c) + 4 for c in "abcdefghijabcde"]


def test_tfds_missing_gives_clear_error():
    # tensorflow-datasets is an optional extra (absent in the test environment).
    try:
        import tensorflow_datasets  # noqa: F401
    except ImportError:
        with pytest.raises(DataError, match=r"tensorflow-datasets.*pip install 'mir-jax\[tfds\]'"):
            TFDSSource("coco_captions", data_dir="/nonexistent")
    else:
        with pytest.raises(DataError, match="not prepared"):
            TFDSSource("coco_captions", data_dir="/nonexistent")


def test_image_pad_crop_and_normalize():
    mean = (0.5, 0.25, 0.0)
    wide = np.zeros((2, 4, 3), np.uint8)
    wide[:] = RED
    out = load_and_preprocess(wide, ImageConfig(size=4, mean=mean, mode="pad"))
    bg = [int(0.5 * 255), int(0.25 * 255), 0]
    assert out[0].tolist() == [bg] * 4 and out[3].tolist() == [bg] * 4
    assert out[1].tolist() == [list(RED)] * 4 and out[2].tolist() == [list(RED)] * 4
    halves = np.zeros((4, 8, 3), np.uint8)
    halves[:, :4] = RED
    halves[:, 4:] = BLUE
    out = load_and_preprocess(halves, ImageConfig(size=4, mode="crop"))  # keeps columns 2..5
    assert out[:, :2].reshape(-1, 3).tolist() == [list(RED)] * 8
    assert out[:, 2:].reshape(-1, 3).tolist() == [list(BLUE)] * 8
    px = np.array([[0, 255, 51]], np.uint8)
    got = normalize(px, mean=(0.5, 0.5, 0.2), std=(0.5, 0.25, 0.1))
    np.testing.assert_allclose(got, [[(0 - 0.5) / 0.5, (1 - 0.5) / 0.25, (0.2 - 0.2) / 0.1]], atol=1e-6)


def test_corrupt_and_missing_image_reasons(tmp_path):
    from mir_jax.data import SkipSample

    write_images(tmp_path)
    cfg = ImageConfig(size=8)
    assert load_and_preprocess(str(tmp_path / "good.jpg"), cfg).shape == (8, 8, 3)
    for name, reason in [("nope.png", "missing_image"), ("garbage.jpg", "corrupt_image"),
                         ("truncated.jpg", "corrupt_image")]:
        with pytest.raises(SkipSample) as e:
            load_and_preprocess(str(tmp_path / name), cfg)
        assert e.value.reason == reason
