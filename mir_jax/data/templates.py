"""Prompt templates: turn a normalized record into segments, and segments into tokens.

Normalized records (what every source yields; see ``sources.py``):

* ``{"kind": "conversation", "id", "file", "images": [ref, ...], "turns": [(role, text), ...]}``
  with role "user"/"assistant"/"system" and ``<image>`` tags in user turns;
* ``{"kind": "caption", "id", "file", "images": [ref], "caption": str}``;
* ``{"kind": "interleaved", "id", "file", "images": [ref, ...], "segments": [{"text": s} | {"image": i}]}``;
* ``{"kind": "text", "id", "file", "text": str}``.

Templates (the ``template`` argument of :func:`render`):

* ``plain`` -- LLaVA pre-training: ``[bos] <image> caption [eos]``, loss on the caption and
  eos (LLaVA ends with "\\n"; an eos lets generation stop). A 2-turn conversation uses its
  assistant reply as the caption, as LLaVA's ``preprocess_plain`` does.
* ``vicuna_v1`` -- LLaVA-1.5 SFT and the MIR evaluation prompt:
  ``[bos]{system} USER: {user} ASSISTANT: {answer}[eos]USER: ...``, loss on every answer and
  its eos; a user turn's single ``<image>`` tag moves to its start followed by "\\n"
  (LLaVA's ``preprocess_multimodal``).
* ``chat`` -- the tokenizer's own chat template; assistant spans are found by rendering the
  conversation prefix by prefix.
* ``document`` -- text and interleaved documents: ``[bos] text <image> text ... [eos]``, loss
  on all text tokens and eos.

A segment is ``("text", str, loss)``, ``("image", index)``, ``("bos",)`` or ``("eos", loss)``.
"""

from __future__ import annotations

import numpy as np

from .errors import (
    BAD_RECORD,
    EMPTY_CONVERSATION,
    EMPTY_TEXT,
    IMAGE_TAG_WITHOUT_IMAGE,
    IMAGE_WITHOUT_TAG,
    SkipSample,
)
from .tokenizer import IMAGE_TOKEN

VICUNA_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
CAPTION_PROMPT = "Describe the image briefly."
TEMPLATES = ("plain", "vicuna_v1", "chat", "document")

_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
          "system": "system"}


def _check_image_count(n_tags: int, n_images: int) -> None:
    if n_tags > n_images:
        raise SkipSample(IMAGE_TAG_WITHOUT_IMAGE, f"{n_tags} <image> tags, {n_images} images")
    if n_tags < n_images:
        raise SkipSample(IMAGE_WITHOUT_TAG, f"{n_tags} <image> tags, {n_images} images")


def normalize_turns(turns) -> tuple[str | None, list[tuple[str, str]]]:
    """Validate a conversation: returns (system or None, [(role, text), ...]) alternating user/assistant."""
    system, out = None, []
    for turn in turns or []:
        role, text = turn
        role = _ROLES.get(role)
        if role is None:
            raise SkipSample(BAD_RECORD, f"unknown role {turn[0]!r}")
        if not isinstance(text, str) or not text.strip():
            raise SkipSample(EMPTY_CONVERSATION, f"empty {role} turn")
        if role == "system":
            system = text
            continue
        if not out and role == "assistant":
            continue  # LLaVA skips a conversation's leading assistant turn.
        if out and out[-1][0] == role:
            raise SkipSample(BAD_RECORD, f"two consecutive {role} turns")
        out.append((role, text))
    if out and out[-1][0] == "user":
        out.pop()  # a trailing question without an answer carries no loss
    if not out:
        raise SkipSample(EMPTY_CONVERSATION, "no user/assistant exchange")
    return system, out


def _user_segments(text: str, first_image: int, move_tag: bool) -> list[tuple]:
    """Split a user message on <image> tags into text and image segments."""
    if move_tag and text.count(IMAGE_TOKEN) == 1:
        text = IMAGE_TOKEN + "\n" + text.replace(IMAGE_TOKEN, "").strip()
    segs, parts = [], text.split(IMAGE_TOKEN)
    for k, part in enumerate(parts):
        if k > 0:
            segs.append(("image", first_image + k - 1))
        if part:
            segs.append(("text", part, False))
    return segs


def _conversation(record) -> tuple[str | None, list[tuple[str, str]], int]:
    if record["kind"] == "caption":
        caption = record.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise SkipSample(EMPTY_TEXT, "empty caption")
        turns = [("user", IMAGE_TOKEN + "\n" + CAPTION_PROMPT), ("assistant", caption)]
        return None, turns, len(record.get("images") or [])
    system, turns = normalize_turns(record.get("turns"))
    return system, turns, len(record.get("images") or [])


def render_plain(record) -> list[tuple]:
    n_images = len(record.get("images") or [])
    if record["kind"] == "caption":
        caption = record.get("caption")
        if not isinstance(caption, str) or not caption.strip():
            raise SkipSample(EMPTY_TEXT, "empty caption")
    else:
        _, turns = normalize_turns(record.get("turns"))
        n_tags = sum(t.count(IMAGE_TOKEN) for r, t in turns if r == "user")
        _check_image_count(n_tags, n_images)
        caption = turns[1][1]
    if n_images != 1:
        raise SkipSample(IMAGE_WITHOUT_TAG if n_images > 1 else IMAGE_TAG_WITHOUT_IMAGE,
                         f"plain template needs exactly one image, got {n_images}")
    return [("bos",), ("image", 0), ("text", caption, True), ("eos", True)]


def render_vicuna_v1(record, system: str | None = None) -> list[tuple]:
    rec_system, turns, n_images = _conversation(record)
    system = rec_system if rec_system is not None else (VICUNA_SYSTEM if system is None else system)
    n_tags = sum(t.count(IMAGE_TOKEN) for r, t in turns if r == "user")
    _check_image_count(n_tags, n_images)
    segs: list[tuple] = [("bos",), ("text", system + " ", False)]
    image = 0
    for role, text in turns:
        if role == "user":
            segs.append(("text", "USER: ", False))
            segs += _user_segments(text, image, move_tag=True)
            image += text.count(IMAGE_TOKEN)
            segs.append(("text", " ", False))
        else:
            segs.append(("text", "ASSISTANT: ", False))
            segs.append(("text", text, True))
            segs.append(("eos", True))
    return segs


def render_chat(record, tokenizer) -> list[tuple]:
    system, turns, n_images = _conversation(record)
    n_tags = sum(t.count(IMAGE_TOKEN) for r, t in turns if r == "user")
    _check_image_count(n_tags, n_images)
    messages = ([{"role": "system", "content": system}] if system else []) + [
        {"role": r, "content": t} for r, t in turns
    ]
    full = tokenizer.render_chat(messages)
    spans = []  # [start, end) character spans of the assistant replies
    for j, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        pre = tokenizer.render_chat(messages[:j], add_generation_prompt=True)
        upto = tokenizer.render_chat(messages[: j + 1])
        if not (upto.startswith(pre) and full.startswith(upto)):
            raise ValueError("chat template does not render conversations prefix by prefix; "
                             "use the vicuna_v1 template")
        spans.append((len(pre), len(upto)))
    pieces, pos = [], 0
    for s, e in spans:
        pieces += [(full[pos:s], False), (full[s:e], True)]
        pos = e
    pieces.append((full[pos:], False))
    segs, image = [], 0
    for text, loss in pieces:
        for k, part in enumerate(text.split(IMAGE_TOKEN)):
            if k > 0:
                segs.append(("image", image))
                image += 1
            if part:
                segs.append(("text", part, loss))
    return segs


def render_document(record) -> list[tuple]:
    if record["kind"] == "text":
        text = record.get("text")
        if not isinstance(text, str) or not text.strip():
            raise SkipSample(EMPTY_TEXT, "empty text")
        return [("bos",), ("text", text, True), ("eos", True)]
    segs: list[tuple] = [("bos",)]
    n_images = len(record.get("images") or [])
    used, has_text = set(), False
    for seg in record.get("segments") or []:
        if "image" in seg:
            i = seg["image"]
            if not isinstance(i, int) or not 0 <= i < n_images:
                raise SkipSample(IMAGE_TAG_WITHOUT_IMAGE, f"segment refers to image {i!r}")
            used.add(i)
            segs.append(("image", i))
        elif isinstance(seg.get("text"), str) and seg["text"]:
            segs.append(("text", seg["text"], True))
            has_text = has_text or bool(seg["text"].strip())
    if len(used) < n_images:
        raise SkipSample(IMAGE_WITHOUT_TAG, f"{n_images - len(used)} images never placed")
    if not has_text:
        raise SkipSample(EMPTY_TEXT, "document without text")
    segs.append(("eos", True))
    return segs


def render(record, template: str, tokenizer=None, system: str | None = None) -> list[tuple]:
    """Segments for a record under a template (text/interleaved records always use ``document``)."""
    if record["kind"] in ("text", "interleaved") or template == "document":
        if record["kind"] in ("conversation", "caption"):
            raise ValueError(f"the document template cannot render {record['kind']} records")
        return render_document(record)
    if template == "plain":
        return render_plain(record)
    if template == "vicuna_v1":
        return render_vicuna_v1(record, system)
    if template == "chat":
        return render_chat(record, tokenizer)
    raise ValueError(f"unknown template {template!r}; expected one of {TEMPLATES}")


def tokenize_segments(segments, tokenizer, num_image_tokens: int):
    """Token ids, per-token loss flags, and (start, image index) of each expanded image.

    Consecutive text segments are tokenized together as one string; a token
    gets the loss flag of its last character (so a BPE token " answer" whose
    leading space belongs to the prompt still counts as answer). Each image
    becomes ``num_image_tokens`` copies of ``tokenizer.image_token_id``.
    """
    ids: list[int] = []
    loss: list[bool] = []
    images: list[tuple[int, int]] = []
    texts: list[str] = []
    masks: list[bool] = []

    def flush():
        if not texts:
            return
        text = "".join(texts)
        char_loss = np.repeat(np.asarray(masks, bool), [len(t) for t in texts])
        toks, offs = tokenizer.encode_with_offsets(text)
        if toks:
            se = np.asarray(offs, np.int64).reshape(-1, 2)
            last = np.minimum(np.maximum(se[:, 1] - 1, se[:, 0]), len(text) - 1)  # a token's last character
            ids.extend(int(t) for t in toks)
            loss.extend(char_loss[last].tolist())
        texts.clear()
        masks.clear()

    for seg in segments:
        kind = seg[0]
        if kind == "text":
            texts.append(seg[1])
            masks.append(bool(seg[2]))
            continue
        flush()
        if kind == "image":
            images.append((len(ids), seg[1]))
            ids += [tokenizer.image_token_id] * num_image_tokens
            loss += [False] * num_image_tokens
        elif kind == "bos":
            if tokenizer.bos_id is not None:
                ids.append(tokenizer.bos_id)
                loss.append(False)
        elif kind == "eos":
            ids.append(tokenizer.eos_id)
            loss.append(bool(seg[1]))
        else:
            raise ValueError(f"unknown segment {seg!r}")
    flush()
    return ids, loss, images
