"""Tokenizers: a built-in byte-level one (no files) and a wrapper for HF tokenizers.

Both expose: ``vocab_size``, ``pad_id``, ``bos_id`` (may be None), ``eos_id``,
``image_token_id``; ``encode(text) -> list[int]`` (no special tokens); ``encode_with_offsets(text)
-> (ids, offsets)``, ``offsets[i] = (start, end)`` the characters of token i (labels are mapped
through them, so a prompt is tokenized in one piece); ``decode(ids) -> str`` (special tokens
dropped, image tokens as ``<image>``); ``chat_template`` (or None) and
``render_chat(messages, add_generation_prompt)``.
"""

from __future__ import annotations

import os

IMAGE_TOKEN = "<image>"


class ByteTokenizer:
    """UTF-8 bytes as tokens, after four reserved ids: pad 0, bos 1, eos 2, image 3.

    Byte b has id ``b + 4``. ``vocab_size`` is 264: the 260 used ids rounded up
    to a multiple of 8 so the embedding table shards evenly over devices (ids
    260..263 are never produced).
    """

    pad_id = 0
    bos_id = 1
    eos_id = 2
    image_token_id = 3
    offset = 4
    vocab_size = 264
    chat_template = None
    name = "byte"

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        data = text.encode("utf-8")
        if len(data) == len(text):  # ASCII: byte i is character i
            return [b + self.offset for b in data], [(i, i + 1) for i in range(len(text))]
        ids, offsets = [], []
        for ci, ch in enumerate(text):
            for b in ch.encode("utf-8"):
                ids.append(b + self.offset)
                offsets.append((ci, ci + 1))
        return ids, offsets

    def decode(self, ids) -> str:
        out, buf = [], bytearray()
        for i in ids:
            i = int(i)
            if self.offset <= i < self.offset + 256:
                buf.append(i - self.offset)
            elif i == self.image_token_id:
                out.append(buf.decode("utf-8", errors="replace"))
                buf = bytearray()
                out.append(IMAGE_TOKEN)
        out.append(buf.decode("utf-8", errors="replace"))
        return "".join(out)

    def render_chat(self, messages, add_generation_prompt: bool = False) -> str:
        raise ValueError("the built-in byte tokenizer has no chat template; use 'vicuna_v1' or 'plain'")

    def __eq__(self, other):
        return isinstance(other, ByteTokenizer)

    def __hash__(self):
        return hash(ByteTokenizer)


class HFTokenizer:
    """Wraps a Hugging Face tokenizer (an instance or a local directory for AutoTokenizer).

    ``image_token_id`` is the tokenizer's ``<image>`` token when it has one (as
    the llava-hf checkpoints do); otherwise ``<image>`` is added as a special
    token, which grows ``vocab_size`` by one (the embedding must cover it).
    ``pad_id`` falls back to the unk token, then eos, as LLaVA does for Vicuna.
    Offsets need a *fast* tokenizer (the AutoTokenizer default).
    """

    def __init__(self, tokenizer, *, image_token: str = IMAGE_TOKEN):
        if isinstance(tokenizer, (str, os.PathLike)):
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(os.fspath(tokenizer))
        self.tok = tokenizer
        self.name = getattr(tokenizer, "name_or_path", "hf")
        vocab = tokenizer.get_vocab()
        if image_token not in vocab:
            tokenizer.add_special_tokens({"additional_special_tokens": [image_token]})
        self.image_token_id = int(tokenizer.convert_tokens_to_ids(image_token))
        if tokenizer.eos_token_id is None:
            raise ValueError(f"tokenizer {self.name!r} has no eos token")
        self.eos_id = int(tokenizer.eos_token_id)
        self.bos_id = None if tokenizer.bos_token_id is None else int(tokenizer.bos_token_id)
        pad = tokenizer.pad_token_id
        if pad is None:
            pad = tokenizer.unk_token_id if tokenizer.unk_token_id is not None else self.eos_id
        self.pad_id = int(pad)
        self.vocab_size = len(tokenizer)

    @property
    def chat_template(self):
        return getattr(self.tok, "chat_template", None)

    def encode(self, text: str) -> list[int]:
        return list(self.tok(text, add_special_tokens=False)["input_ids"])

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        if not getattr(self.tok, "is_fast", False):
            raise ValueError(f"tokenizer {self.name!r} is not a fast tokenizer; offsets are needed")
        enc = self.tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        parts, run = [], []
        for i in ids:
            if i == self.image_token_id:
                if run:
                    parts.append(self.tok.decode(run, skip_special_tokens=True))
                    run = []
                parts.append(IMAGE_TOKEN)
            else:
                run.append(i)
        if run:
            parts.append(self.tok.decode(run, skip_special_tokens=True))
        return "".join(parts)

    def render_chat(self, messages, add_generation_prompt: bool = False) -> str:
        if not self.chat_template:
            raise ValueError(f"tokenizer {self.name!r} has no chat template")
        return self.tok.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=add_generation_prompt
        )


def load_tokenizer(spec=None):
    """None or "byte": the built-in ByteTokenizer; a path: HFTokenizer; an instance: wrapped/as is."""
    if spec is None or (isinstance(spec, str) and spec == "byte"):
        return ByteTokenizer()
    if isinstance(spec, (ByteTokenizer, HFTokenizer)):
        return spec
    return HFTokenizer(spec)
