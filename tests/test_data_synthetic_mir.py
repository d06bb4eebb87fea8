"""The embedded corpus (determinism, captions match pixels, answers match scenes) and the MIR
evaluation batches."""

import hashlib
import re

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from mir_jax.data import (
    VICUNA_SYSTEM,
    ByteTokenizer,
    SyntheticSource,
    make_mir_batches,
)
from mir_jax.data.synthetic import COLOURS

NUM = {"one": 1, "two": 2, "three": 3}
GROUP = r"(one|two|three) (small|large) (\w+) (circle|square|triangle)s?( on the (left|right))?"
CAPTION = re.compile(rf"^{GROUP}( and {GROUP})?\.$")


def test_synthetic_is_deterministic_and_split_dependent():
    a = SyntheticSource("caption", seed=3, image_size=32)
    b = SyntheticSource("caption", seed=3, image_size=32)
    c = SyntheticSource("caption", seed=3, image_size=32, split="eval")
    for i in (0, 7, 99_999):
        assert a[i]["caption"] == b[i]["caption"]
        np.testing.assert_array_equal(a[i]["images"][0], b[i]["images"][0])
    assert [a[i]["caption"] for i in range(20)] != [c[i]["caption"] for i in range(20)]
    assert [a[i]["caption"] for i in range(20)] != [SyntheticSource("caption", seed=4)[i]["caption"]
                                                    for i in range(20)]


@pytest.mark.parametrize("index", range(25))
def test_caption_describes_the_pixels(index):
    """Parse the caption and check colour, count (connected blobs) and side in the image."""
    rec = SyntheticSource("caption", image_size=64)[index]
    m = CAPTION.match(rec["caption"])
    assert m, rec["caption"]
    img = rec["images"][0]
    groups = [m.group(1, 3, 6)] + ([m.group(8, 10, 13)] if m.group(7) else [])
    for count, colour, side in groups:
        mask = np.all(img == np.array(COLOURS[colour], np.uint8), axis=-1)
        _, n_blobs = ndimage.label(mask)
        assert n_blobs == NUM[count], (rec["caption"], colour)
        cols = np.nonzero(mask)[1]
        if side == "left":
            assert cols.max() < 32
        elif side == "right":
            assert cols.min() >= 32
    # No pixel of a colour the caption does not mention.
    others = set(COLOURS) - {g[1] for g in groups}
    for colour in others:
        assert not np.any(np.all(img == np.array(COLOURS[colour], np.uint8), axis=-1))


def test_qa_answers_match_the_scene():
    src = SyntheticSource("qa", image_size=16)
    checked = exists = choices = 0
    for i in range(120):
        rec = src[i]
        scene = src.scene(i)
        assert rec["turns"][0][1].startswith("<image>\n")
        for (_, q), (_, a) in zip(rec["turns"][::2], rec["turns"][1::2]):
            q = q.replace("<image>\n", "")
            m = re.fullmatch(r"How many (\w+) (\w+)s are there\?", q)
            if m:
                (g,) = [g for g in scene if g["colour"] == m.group(1)]
                assert g["kind"] == m.group(2)
                assert a == ["One.", "Two.", "Three."][g["count"] - 1]
                checked += 1
            m = re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", q)
            if m:
                present = any((g["colour"], g["kind"]) == m.groups() for g in scene)
                assert a == ("Yes." if present else "No.")
                exists += 1
            if q.endswith("Answer with the option's letter from the given choices directly."):
                # "How many red circles are there?\nA. two\nB. one ..." answered with a letter.
                lines = q.split("\n")
                options = {line[0]: line[3:] for line in lines[1:-1]}
                m = re.fullmatch(r"How many (\w+) (\w+)s are there\?", lines[0])
                if m:
                    (g,) = [g for g in scene if g["colour"] == m.group(1)]
                    assert options[a] == ["zero", "one", "two", "three"][g["count"]]
                    choices += 1
    assert checked > 5 and exists > 5 and choices > 0


# The first 12 samples of every kind and split as written before text_qa existed: the embedded
# benchmark, the held-out sets and the recorded results depend on them staying as they are.
FROZEN_SAMPLES = {
    "caption": {"train": "4f77ab03693dbb1e", "eval": "a4351ac557da11f6", "bench": "3c1d2360ad7f9829"},
    "interleaved": {"train": "6a50ab8068d9cf39", "eval": "f17c38ddf8212a8d", "bench": "9e6f316540c91892"},
    "text": {"train": "6f44996f20f9e44d", "eval": "ad4c0bd0cf479ac6", "bench": "853a4d09ab52a826"},
    "qa": {"train": "0b1b970a3a2c94eb", "eval": "8a36987fd83c020a", "bench": "de88f294cd7a2afb"},
}


def _digest(src, n=12) -> str:
    h = hashlib.sha256()
    for i in range(n):
        rec = src[i]
        for key in sorted(rec):
            if key == "images":
                for image in rec[key]:
                    h.update(np.ascontiguousarray(image).tobytes())
            else:
                h.update(repr(rec[key]).encode())
    return h.hexdigest()[:16]


@pytest.mark.parametrize("kind", sorted(FROZEN_SAMPLES))
def test_existing_kinds_are_unchanged(kind):
    got = {split: _digest(SyntheticSource(kind, image_size=16, split=split)) for split in FROZEN_SAMPLES[kind]}
    assert got == FROZEN_SAMPLES[kind]


SCENE = re.compile(rf"In the picture: ({GROUP}( and {GROUP})?\.)\n")
WORDS = ["zero", "one", "two", "three"]


def test_text_qa_answers_match_the_told_scene():
    """Each text_qa conversation opens with the scene in words; its answers are checked against
    that sentence, parsed here (counts, colours, shapes, sides recounted from the words, not
    through the corpus's own answer code), and the sentence against the sample's scene."""
    src = SyntheticSource("text_qa")
    seen = set()
    for i in range(300):
        rec = src[i]
        assert rec["kind"] == "conversation" and rec["images"] == []
        roles = [r for r, _ in rec["turns"]]
        assert roles == ["user", "assistant"] * (len(roles) // 2) and 2 <= len(roles) <= 4
        m = SCENE.match(rec["turns"][0][1])
        assert m, rec["turns"][0][1]
        told = m.group(1)
        groups = [dict(count=NUM[c], size=z, colour=col, kind=k, side=s)
                  for c, z, col, k, _, s in (m.group(2, 3, 4, 5, 6, 7), m.group(9, 10, 11, 12, 13, 14))
                  if c]
        assert told == " and ".join(
            f"{WORDS[g['count']]} {g['size']} {g['colour']} {g['kind']}" + ("s" if g["count"] > 1 else "")
            + (f" on the {g['side']}" if g["side"] else "") for g in src.scene(i)) + "."
        by_colour = {g["colour"]: g for g in groups}
        by_kind = {g["kind"]: g for g in groups}
        for k, ((_, q), (_, a)) in enumerate(zip(rec["turns"][::2], rec["turns"][1::2])):
            if k == 0:
                q = q[m.end():]
            assert "<image>" not in q and "In the picture" not in q
            lines = q.split("\n")
            if len(lines) > 1:  # lettered multiple choice: the letter of the right option
                assert lines[-1] == "Answer with the option's letter from the given choices directly."
                options = {line[0]: line[3:] for line in lines[1:-1]}
                assert sorted(options) == ["A", "B", "C", "D"] and len(set(options.values())) == 4
                question = lines[0]
                if mm := re.fullmatch(r"What colour are the (\w+)s\?", question):
                    right = by_kind[mm.group(1)]["colour"]
                elif mm := re.fullmatch(r"How many (\w+) (\w+)s are there\?", question):
                    right = WORDS[by_colour[mm.group(1)]["count"]]
                else:
                    mm = re.fullmatch(r"What shape are the (\w+) objects\?", question)
                    right = by_colour[mm.group(1)]["kind"]
                assert options[a] == right, (q, a)
                seen.add("choice")
            elif mm := re.fullmatch(r"How many (\w+) (\w+)s are there\?", q):
                g = by_colour[mm.group(1)]
                assert g["kind"] == mm.group(2) and a == WORDS[g["count"]].capitalize() + "."
                seen.add("count")
            elif mm := re.fullmatch(r"What colour (is|are) the (\w+?)s?\?", q):
                g = by_kind[mm.group(2)]
                assert a == g["colour"].capitalize() + "." and (mm.group(1) == "is") == (g["count"] == 1)
                seen.add("colour")
            elif mm := re.fullmatch(r"What shape (is|are) the (\w+) objects?\?", q):
                g = by_colour[mm.group(2)]
                assert a == (f"A {g['kind']}." if g["count"] == 1 else g["kind"].capitalize() + "s."), (q, a)
                seen.add("shape")
            elif mm := re.fullmatch(r"Where are the (\w+) (\w+)s\?", q):
                g = by_colour[mm.group(1)]
                assert g["kind"] == mm.group(2) and a == f"On the {g['side']}."
                seen.add("position")
            elif mm := re.fullmatch(r"Is there a (\w+) (\w+) in the image\?", q):
                present = by_colour.get(mm.group(1), {}).get("kind") == mm.group(2)
                assert a == ("Yes." if present else "No."), (told, q, a)
                seen.add("yes" if present else "no")
            else:
                assert q == "Describe the image briefly." and a == told[0].upper() + told[1:], (q, a)
                seen.add("describe")
    assert seen == {"choice", "count", "colour", "shape", "position", "yes", "no", "describe"}


def test_text_qa_is_deterministic_and_its_own_stream():
    a, b = SyntheticSource("text_qa", seed=1), SyntheticSource("text_qa", seed=1)
    assert [a[i]["turns"] for i in range(10)] == [b[i]["turns"] for i in range(10)]
    held_out = SyntheticSource("text_qa", seed=1, split="eval")
    assert [a[i]["turns"] for i in range(10)] != [held_out[i]["turns"] for i in range(10)]
    qa = SyntheticSource("qa", seed=1)
    assert [a.scene(i) for i in range(10)] != [qa.scene(i) for i in range(10)]


def test_text_and_interleaved_records():
    t = SyntheticSource("text")[0]
    assert t["kind"] == "text" and t["text"].endswith(".") and len(t["text"]) > 20
    d = SyntheticSource("interleaved", image_size=16)[0]
    n = len(d["images"])
    assert 2 <= n <= 3 and [s["image"] for s in d["segments"] if "image" in s] == list(range(n))


def test_mir_batches_exact_vicuna_layout(tmp_path):
    img_dir, txt_dir = tmp_path / "images", tmp_path / "stories"
    img_dir.mkdir()
    txt_dir.mkdir()
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    for i, c in enumerate(colours):
        Image.new("RGB", (10, 10), c).save(img_dir / f"im{i}.png")
    stories = ["Alpha story.", "Beta.", "Gamma goes on."]
    for i, s in enumerate(stories):
        (txt_dir / f"s{i}.story").write_text(f"{s}\n\n@highlight\n\nnot this\n\n@highlight\n\nnor this")
    k, seq = 4, 300
    batches = make_mir_batches(str(img_dir), str(txt_dir), tokenizer=ByteTokenizer(),
                               num_samples=3, image_size=8, num_image_tokens=k, batch_size=2,
                               seq_len=seq, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    assert len(batches) == 2
    rows = [(b, r) for b in batches for r in range(2)][:3]
    for i, (b, r) in enumerate(rows):
        def enc(s):
            return [x + 4 for x in s.encode()]
        prompt = [1] + enc(VICUNA_SYSTEM + " USER: ") + [3] * k + enc("\n ASSISTANT: ")
        answer = enc(stories[i]) + [2]
        want = prompt + answer
        n = len(want)
        assert b["input_ids"][r, :n].tolist() == want
        assert b["labels"][r, :n].tolist() == [-100] * len(prompt) + answer
        assert b["attention_mask"][r].tolist() == [1] * n + [0] * (seq - n)
        assert b["image_mask"][r].tolist() == [True]
        # Pure-colour image, normalized with mean = std = 0.5: channel 255 -> 1, 0 -> -1.
        want_px = np.array(colours[i], np.float32) / 255 * 2 - 1
        np.testing.assert_allclose(b["pixel_values"][r, 0], np.broadcast_to(want_px, (8, 8, 3)),
                                   atol=1e-6)
    assert batches[1]["attention_mask"][1].sum() == 0  # padding row


def test_mir_needs_enough_samples(tmp_path):
    with pytest.raises(ValueError, match="needs 5 samples"):
        make_mir_batches([np.zeros((4, 4, 3), np.uint8)] * 2, ["a", "b", "c"], num_samples=5)


def test_mir_long_story_truncated_image_kept():
    story = "word " * 100
    (b,) = make_mir_batches(["/nonexistent.png", np.zeros((4, 4, 3), np.uint8)], [story, story],
                            num_samples=2, image_size=4, num_image_tokens=4, batch_size=2,
                            seq_len=64, max_bad_fraction=0.5, system="S")
    # The missing image is skipped (counted), the other pair is truncated to 64 tokens:
    # [bos] "S USER: " (8) + 4 image tokens + "\n ASSISTANT: " (13) + 38 story bytes.
    assert b["attention_mask"].sum(1).tolist() == [64, 0]
    assert b["labels"][0].tolist() == [-100] * 26 + [x + 4 for x in story[:38].encode()]
    assert int((b["input_ids"][0] == 3).sum()) == 4


def test_distinct_questions_removes_repeats_and_off_keeps_the_stream():
    """Six independent draws about a scene of 1-2 groups repeat a question in many
    conversations (answered by copying); distinct_questions redraws them. Off, the records are
    the default source's exactly."""
    def repeats(src):  # conversations asking some question twice (the first turn opens with the scene)
        questions = [[text.split("\n", 1)[1] if k == 0 else text for k, (_, text) in enumerate(rec["turns"][::2])]
                     for rec in (src[i] for i in range(300))]
        return sum(len(set(qs)) < len(qs) for qs in questions)

    plain = SyntheticSource("text_qa", max_turns=6)
    distinct = SyntheticSource("text_qa", max_turns=6, distinct_questions=True)
    assert repeats(plain) > 50  # the defect the option exists for (about a third here)
    assert repeats(distinct) == 0
    off = SyntheticSource("text_qa", max_turns=6, distinct_questions=False)
    assert [off[i] for i in range(20)] == [plain[i] for i in range(20)]
    # The redrawn conversations keep every family and stay as long.
    turns = [len(distinct[i]["turns"]) for i in range(300)]
    assert turns == [len(plain[i]["turns"]) for i in range(300)]
