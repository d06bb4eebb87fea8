"""Prompts for generation and likelihood scoring, phrased exactly as the model was trained.

A prompt is the training rendering (`mir_jax.data.templates`) of the record with the answer in
place, cut before the answer's first token, so the boundary falls where training put it for
every tokenizer. Conversation templates get few-shot user/assistant turns; document templates
interleaved "<image>{question}{answer}\\n" examples (MM1's few-shot setting); docs/evaluation.md.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from mir_jax.data.templates import render, tokenize_segments
from mir_jax.data.tokenizer import IMAGE_TOKEN

CONVERSATION_TEMPLATES = ("vicuna_v1", "chat")
DOCUMENT_TEMPLATES = ("plain", "document")
_PLACEHOLDER = "X"  # stands in for the answer when only the prompt is wanted


@dataclasses.dataclass
class Prompt:
    """ids: int32 [S] (image tokens expanded), answer at [answer_start, answer_end) when an
    answer was given (eos excluded); images: refs in token order; stop: strings that end a
    generated answer (besides EOS); text: the query as written in the answer file."""

    ids: np.ndarray
    images: list
    text: str
    stop: tuple[str, ...] = ()
    answer_start: int = 0
    answer_end: int = 0


def encode(model, query: str, image, *, examples=(), answer: str | None = None) -> Prompt:
    """The prompt of `query` (with its `image`, or None) after few-shot `examples`
    [(question, answer, image), ...], for `model` (an `EvalModel`); with `answer` the ids go
    on through the answer (and eos), for likelihood scoring.
    """
    tok, k = model.tokenizer, model.num_image_tokens
    shots = [*examples, (query, _PLACEHOLDER if answer is None else answer, image)]
    images = [im for _, _, im in shots if im is not None]
    if model.template in CONVERSATION_TEMPLATES:
        turns = []
        for q, a, im in shots:
            turns += [("user", (IMAGE_TOKEN + "\n" if im is not None else "") + q), ("assistant", a)]
        record = {"kind": "conversation", "images": images, "turns": turns}
        segments = render(record, model.template, tok, model.system)
        stop: tuple[str, ...] = ()
    elif model.template in DOCUMENT_TEMPLATES:
        segments = [("bos",)]
        for n, (q, a, im) in enumerate(shots):
            if im is not None:
                segments.append(("image", sum(x is not None for _, _, x in shots[:n])))
            last = n == len(shots) - 1
            if q:
                segments.append(("text", q, False))
            segments.append(("text", a, last))
            if not last:
                segments.append(("text", "\n", False))
        segments.append(("eos", True))
        stop = ("\n",)
    else:
        raise ValueError(f"no prompt layout for template {model.template!r}; expected one of "
                         f"{CONVERSATION_TEMPLATES + DOCUMENT_TEMPLATES}")
    ids, loss, _ = tokenize_segments(segments, tok, k)
    start = _last_answer_start(loss)
    end = len(ids) - 1 if ids[-1] == tok.eos_id else len(ids)
    ids = np.asarray(ids if answer is not None else ids[:start], np.int32)
    return Prompt(ids, images, query, stop, start, end if answer is not None else start)


def _last_answer_start(loss: list[bool]) -> int:
    """Index of the first token of the last run of loss tokens (the final answer + eos)."""
    i = len(loss)
    while i > 0 and not loss[i - 1]:
        i -= 1
    while i > 0 and loss[i - 1]:
        i -= 1
    return i


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str:
    """The generated answer up to the first stop string, stripped."""
    for s in stop:
        if s and s in text:
            text = text[: text.index(s)]
    return text.strip()
