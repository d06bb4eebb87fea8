"""Token-by-token layouts of every template, with tokenizers built in the test.

Expected token sequences are written out by hand as words (the WordLevel
tokenizer maps each word/punctuation mark to one id from a vocabulary this file
defines), so the expectations do not come from the code under test.
"""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from mir_jax.data import (
    IGNORE_INDEX,
    ByteTokenizer,
    HFTokenizer,
    ImageConfig,
    ProcessConfig,
    Processor,
)
from mir_jax.data.errors import BadSample

K = 3  # image tokens per image in these tests
WORDS = ["<pad>", "<unk>", "<s>", "</s>", "Be", "nice", ".", "USER", ":", "ASSISTANT", "What",
         "is", "this", "?", "A", "cat", "Two", "dogs", "and", "Here", "a", "red", "circle",
         "Then", "more", "text", "How", "many", "<|user|>", "<|assistant|>", "<|end|>"]
VOCAB = {w: i for i, w in enumerate(WORDS)}
IMG = len(WORDS)  # "<image>" is added after the vocabulary


@pytest.fixture(scope="module")
def word_tok(tmp_path_factory):
    """A WordLevel HF tokenizer saved to disk and loaded back through AutoTokenizer."""
    t = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>", pad_token="<pad>")
    fast.add_special_tokens({"additional_special_tokens": ["<image>", "<|user|>", "<|assistant|>",
                                                           "<|end|>"]})
    fast.chat_template = (
        "{% for m in messages %}<|{{ m['role'] }}|> {{ m['content'] }} <|end|> {% endfor %}"
        "{% if add_generation_prompt %}<|assistant|> {% endif %}"
    )
    path = tmp_path_factory.mktemp("wordtok")
    fast.save_pretrained(path)
    return HFTokenizer(str(path))


def ids(words):
    return [IMG if w == "<image>" else VOCAB[w] for w in words]


def process(record, template, tok, seq_len=64, max_images=4, overlong=None, system=None):
    cfg = ProcessConfig(template=template, tokenizer=tok, image=ImageConfig(size=8),
                        num_image_tokens=K, seq_len=seq_len, max_images=max_images,
                        overlong=overlong, system=system)
    return Processor(cfg, source=0)(record)


def expect(out, words, loss_words_mask):
    """Compare an example with hand-written words and a hand-written 0/1 loss mask."""
    want = ids(words)
    assert out["input_ids"].tolist() == want
    want_labels = [w if m else IGNORE_INDEX for w, m in zip(want, loss_words_mask)]
    assert out["labels"].tolist() == want_labels


IMAGE = np.zeros((8, 8, 3), np.uint8)


def test_hf_wrapper_attributes(word_tok):
    assert word_tok.image_token_id == IMG
    assert (word_tok.bos_id, word_tok.eos_id, word_tok.pad_id) == (2, 3, 0)
    assert word_tok.vocab_size == len(WORDS) + 1
    assert word_tok.decode(ids(["A", "cat", "<image>", "."])) == "A cat<image>."


def test_hf_wrapper_adds_missing_image_token():
    t = Tokenizer(models.WordLevel({"<unk>": 0, "</s>": 1, "x": 2}, unk_token="<unk>"))
    fast = PreTrainedTokenizerFast(tokenizer_object=t, eos_token="</s>", unk_token="<unk>")
    tok = HFTokenizer(fast)
    assert tok.image_token_id == 3 and tok.vocab_size == 4
    assert tok.bos_id is None and tok.pad_id == 0  # pad falls back to unk


def test_plain_caption(word_tok):
    rec = {"kind": "caption", "id": "c", "file": "f", "images": [IMAGE], "caption": "a red circle."}
    out = process(rec, "plain", word_tok)
    words = ["<s>"] + ["<image>"] * K + ["a", "red", "circle", ".", "</s>"]
    expect(out, words, [0, 0, 0, 0, 1, 1, 1, 1, 1])
    assert out["images"].shape == (1, 8, 8, 3)


def test_plain_llava_pretrain_ignores_user_text(word_tok):
    rec = {"kind": "conversation", "id": "p", "file": "f", "images": [IMAGE],
           "turns": [("human", "What is this?\n<image>"), ("gpt", "A cat.")]}
    out = process(rec, "plain", word_tok)
    expect(out, ["<s>"] + ["<image>"] * K + ["A", "cat", ".", "</s>"], [0, 0, 0, 0, 1, 1, 1, 1])


def test_vicuna_v1_two_rounds_moves_image_tag_first(word_tok):
    rec = {"kind": "conversation", "id": "v", "file": "f", "images": [IMAGE],
           "turns": [("human", "What is this?\n<image>"), ("gpt", "A cat."),
                     ("human", "How many?"), ("gpt", "Two.")]}
    out = process(rec, "vicuna_v1", word_tok, system="Be nice.")
    words = (["<s>", "Be", "nice", ".", "USER", ":"] + ["<image>"] * K
             + ["What", "is", "this", "?", "ASSISTANT", ":", "A", "cat", ".", "</s>",
                "USER", ":", "How", "many", "?", "ASSISTANT", ":", "Two", ".", "</s>"])
    mask = [0] * 6 + [0] * K + [0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1]
    expect(out, words, mask)


def test_chat_template_labels_assistant_spans(word_tok):
    rec = {"kind": "conversation", "id": "t", "file": "f", "images": [IMAGE],
           "turns": [("human", "<image> What is this?"), ("gpt", "A cat.")]}
    out = process(rec, "chat", word_tok)
    # "<|user|> <image> What is this? <|end|> <|assistant|> A cat. <|end|> "
    words = (["<|user|>"] + ["<image>"] * K + ["What", "is", "this", "?", "<|end|>",
                                               "<|assistant|>", "A", "cat", ".", "<|end|>"])
    expect(out, words, [0] + [0] * K + [0, 0, 0, 0, 0, 0, 1, 1, 1, 1])


def test_chat_template_missing_on_byte_tokenizer():
    rec = {"kind": "conversation", "id": "t", "file": "f", "images": [],
           "turns": [("human", "hi"), ("gpt", "yo")]}
    with pytest.raises(ValueError, match="no chat template"):
        process(rec, "chat", ByteTokenizer())


def test_interleaved_document(word_tok):
    rec = {"kind": "interleaved", "id": "d", "file": "f", "images": [IMAGE, IMAGE],
           "segments": [{"text": "Here a cat."}, {"image": 0}, {"text": "Then more text."},
                        {"image": 1}]}
    out = process(rec, "document", word_tok)
    words = (["<s>", "Here", "a", "cat", "."] + ["<image>"] * K + ["Then", "more", "text", "."]
             + ["<image>"] * K + ["</s>"])
    mask = [0, 1, 1, 1, 1] + [0] * K + [1, 1, 1, 1] + [0] * K + [1]
    expect(out, words, mask)
    assert out["images"].shape == (2, 8, 8, 3)


def test_truncation_never_splits_an_image(word_tok):
    rec = {"kind": "interleaved", "id": "d", "file": "f", "images": [IMAGE, IMAGE],
           "segments": [{"text": "Here a cat."}, {"image": 0}, {"text": "Then more text."},
                        {"image": 1}]}
    # Full layout: 5 text + 3 image + 4 text + 3 image + eos = 16 tokens. A cut at 14
    # would fall inside the second image (positions 12..14), so it moves to 12.
    out = process(rec, "document", word_tok, seq_len=14, overlong="truncate")
    words = ["<s>", "Here", "a", "cat", "."] + ["<image>"] * K + ["Then", "more", "text", "."]
    expect(out, words, [0, 1, 1, 1, 1] + [0] * K + [1, 1, 1, 1])
    assert out["images"].shape == (1, 8, 8, 3)
    # The same record under "skip" is counted as too long.
    bad = process(rec, "document", word_tok, seq_len=14, overlong="skip")
    assert isinstance(bad, BadSample) and bad.reason == "too_long"
    # More images than slots: cut before the second image.
    out = process(rec, "document", word_tok, max_images=1, overlong="truncate")
    assert out["input_ids"].tolist() == ids(words)


def test_byte_tokenizer_layout():
    tok = ByteTokenizer()
    assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.image_token_id) == (0, 1, 2, 3)
    assert tok.vocab_size == 264 and tok.vocab_size % 8 == 0
    assert tok.encode("Aé") == [65 + 4, 0xC3 + 4, 0xA9 + 4]
    assert tok.encode_with_offsets("Aé")[1] == [(0, 1), (1, 2), (1, 2)]
    assert tok.encode_with_offsets("Hi!") == ([72 + 4, 105 + 4, 33 + 4], [(0, 1), (1, 2), (2, 3)])  # ASCII path
    assert tok.encode_with_offsets("") == ([], [])
    assert tok.decode([1, 65 + 4, 3, 0xC3 + 4, 0xA9 + 4, 2, 0]) == "A<image>é"
    rec = {"kind": "caption", "id": "c", "file": "f", "images": [IMAGE], "caption": "hi"}
    out = process(rec, "plain", tok)
    assert out["input_ids"].tolist() == [1, 3, 3, 3, ord("h") + 4, ord("i") + 4, 2]
    assert out["labels"].tolist() == [-100] * 4 + [ord("h") + 4, ord("i") + 4, 2]


def test_bpe_token_straddling_prompt_space_counts_as_answer(tmp_path):
    """Byte-level BPE merges the space after "ASSISTANT:" into the answer's first token."""
    from tokenizers import trainers

    t = Tokenizer(models.BPE(unk_token=None))
    t.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    from tokenizers import decoders

    t.decoder = decoders.ByteLevel()
    corpus = ["USER: what is the cat ASSISTANT: the cat is red"] * 50
    t.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=300, special_tokens=["<s>", "</s>"],
                                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>")
    fast.save_pretrained(tmp_path)
    tok = HFTokenizer(str(tmp_path))
    rec = {"kind": "conversation", "id": "b", "file": "f", "images": [],
           "turns": [("human", "what is the cat"), ("gpt", "the cat is red")]}
    out = process(rec, "vicuna_v1", tok, seq_len=512, system="")
    lab = out["labels"]
    answer = [int(i) for i in lab if i != IGNORE_INDEX]
    assert answer[-1] == tok.eos_id
    assert tok.decode(answer[:-1]).strip() == "the cat is red"
    # Everything up to "ASSISTANT:" carries no loss.
    prompt = [int(i) for i, lb in zip(out["input_ids"], lab) if lb == IGNORE_INDEX]
    assert tok.decode(prompt).rstrip().endswith("ASSISTANT:")
