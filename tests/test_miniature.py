"""The miniature world's shipped tokenizer (mir_jax/assets/miniature_base) and the embedded
benchmark's scene modes (image / told in words / blank)."""

import numpy as np
import pytest

from mir_jax.data import miniature, synthetic
from mir_jax.data.tokenizer import HFTokenizer, load_tokenizer
from mir_jax.evals.benchmark import embedded_task


@pytest.fixture(scope="module")
def tok():
    return HFTokenizer(miniature.BASE_DIR)


def test_special_tokens_have_the_byte_tokenizers_ids(tok):
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.image_token_id) == (0, 1, 2, 3)
    assert tok.tok.convert_ids_to_tokens([0, 1, 2, 3]) == ["<pad>", "<s>", "</s>", "<image>"]


def test_corpus_round_trips(tok):
    for text in miniature.corpus_texts(samples_per_kind=100):
        assert tok.decode(tok.encode(text)) == text


def test_a_corpus_word_is_one_token(tok):
    # Written by hand: the byte-level pre-tokenizer keeps a word's leading space with it.
    text = "A chat between a user and an assistant. USER: In the picture: two large red circles on the left."
    expected = ["A", "Ġchat", "Ġbetween", "Ġa", "Ġuser", "Ġand", "Ġan", "Ġassistant", ".", "ĠUSER", ":",
                "ĠIn", "Ġthe", "Ġpicture", ":", "Ġtwo", "Ġlarge", "Ġred", "Ġcircles", "Ġon", "Ġthe",
                "Ġleft", "."]
    assert tok.tok.convert_ids_to_tokens(tok.encode(text)) == expected
    # An answer after "ASSISTANT:" and the evaluators' placeholder "X" are one token each.
    assert tok.tok.convert_ids_to_tokens(tok.encode(" ASSISTANT: X")) == ["ĠASSISTANT", ":", "ĠX"]
    assert len(tok.encode(" Red.")) == 2


def test_unknown_text_falls_back_to_bytes(tok):
    text = "Zebra ünïcode 42"
    assert tok.decode(tok.encode(text)) == text


def test_shipped_tokenizer_is_what_the_builder_writes(tok):
    built = miniature.build_tokenizer()
    assert built.get_vocab() == tok.tok.get_vocab()
    sample = next(iter(miniature.corpus_texts(samples_per_kind=1)))
    assert built(sample)["input_ids"] == tok.tok(sample)["input_ids"]


def test_load_tokenizer_reads_the_directory():
    assert load_tokenizer(miniature.BASE_DIR).vocab_size == HFTokenizer(miniature.BASE_DIR).vocab_size


@pytest.mark.parametrize("task", ["vqa", "pope", "multiple_choice"])
def test_scene_told_in_words(task):
    shown = embedded_task(task, 6, image_size=32)
    told = embedded_task(task, 6, image_size=32, scene="text")
    for a, b in zip(shown, told):
        assert b["image"] is None
        # The scene as text_qa tells it ("In the picture: " + the caption), then the question.
        assert b["question"] == "In the picture: " + synthetic.caption(a["scene"]) + "\n" + a["question"]


def test_blank_scene_is_one_grey():
    blank = embedded_task("vqa", 4, image_size=32, scene="blank")
    shown = embedded_task("vqa", 4, image_size=32)
    for a, b in zip(shown, blank):
        assert b["image"].shape == a["image"].shape and b["image"].dtype == np.uint8
        assert (b["image"] == 240).all()
        assert b["question"] == a["question"]


def test_unknown_scene_mode_is_one_line():
    with pytest.raises(ValueError, match="scene='words'"):
        embedded_task("vqa", 2, image_size=32, scene="words")
