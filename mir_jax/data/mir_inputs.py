"""MIR evaluation inputs: one image and one unrelated text per sample.

The MIR paper's setup (docs/mir.md, "Inputs"): image i paired with text i (a CNN/DailyMail story
before its first ``@highlight``; each side optionally shuffled), formatted with ``vicuna_v1``::

    "{system} USER: <image>\\n ASSISTANT: {story}</s>"

Batches follow ``pipeline.py``'s contract: a row's vision tokens are its K ``image_token_id``
positions, its text tokens every real position after the last of them. Stories longer than
``seq_len`` are cut (the image is always kept whole); `mir_sample_lengths` gives the uncut
lengths. ``sort_by_length`` runs longest first in batches as long as their longest row
(docs/evaluation.md, "Data").
"""

from __future__ import annotations

import os

import grain
import numpy as np

from .errors import SkipSample
from .images import CLIP_MEAN, CLIP_STD, ImageConfig
from .mixture import DEFAULTS, _finish
from .pipeline import BatchConfig, ProcessConfig, Processor
from .sources import CaptionSource, ImageFolderSource, ListSource, LlavaSource, TextSource
from .synthetic import SyntheticSource
from .templates import render, tokenize_segments
from .tokenizer import IMAGE_TOKEN, load_tokenizer


def _image_source(images, image_size: int, seed: int, image_folder: str | None = None):
    if isinstance(images, str):
        if images == "synthetic":
            return SyntheticSource("caption", num_samples=10_000, image_size=image_size,
                                   seed=seed, split="eval")
        if os.path.isdir(images):
            return ImageFolderSource(images)
        if images.endswith((".json", ".jsonl")):
            # Image paths are relative to image_folder (LLaVA's --image-folder), else to the file.
            folder = image_folder or os.path.dirname(images)
            source = CaptionSource(images, folder)
            if len(source) and "caption" not in source.records[0]:
                # LLaVA conversations or question files ({"image", "conversations"|"text", ...}):
                # MIR needs only their images.
                source = LlavaSource(images, folder)
            return source
        raise ValueError(f"image source {images!r}: expected a folder, a JSON/JSONL file or 'synthetic'")
    if isinstance(images, (list, tuple)):
        return ListSource([{"kind": "image", "images": [x]} for x in images], name="images")
    return images  # any source whose records carry "images"


def _text_source(texts, seed: int):
    if isinstance(texts, str):
        if texts == "synthetic":
            return SyntheticSource("text", num_samples=10_000, seed=seed, split="eval")
        return TextSource(texts)
    if isinstance(texts, (list, tuple)):
        return ListSource(texts, name="texts")
    return texts  # any source of text records (TextSource, TFDSSource, ...)


class MirPairs:
    """Random-access source of (image i, text i) conversation records.

    ``order`` (optional, a permutation of range(num_samples)): item i is pair order[i].
    """

    def __init__(self, images, texts, num_samples: int, shuffle_seed: int | None = None,
                 order=None):
        self.images, self.texts = images, texts
        self.name = f"mir({getattr(images, 'name', 'images')} x {getattr(texts, 'name', 'texts')})"
        n_img, n_txt = len(images), len(texts)
        if num_samples > min(n_img, n_txt):
            raise ValueError(f"MIR needs {num_samples} samples but has {n_img} images and {n_txt} texts")
        self.num_samples = int(num_samples)
        if shuffle_seed is None:
            self._img_idx, self._txt_idx = np.arange(n_img), np.arange(n_txt)
        else:
            rng = np.random.default_rng(shuffle_seed)
            self._img_idx, self._txt_idx = rng.permutation(n_img), rng.permutation(n_txt)
        self.order = np.arange(self.num_samples) if order is None else np.asarray(order)

    def __len__(self) -> int:
        return self.num_samples

    @staticmethod
    def _turns(txt: dict) -> list[tuple]:
        """The MIR prompt's two turns: the image alone, then the text (or caption) record's text."""
        text = txt.get("text")
        return [("user", IMAGE_TOKEN + "\n"), ("assistant", txt.get("caption") if text is None else text)]

    def text_record(self, i: int) -> dict:
        """The conversation of item i without its image (enough to count its tokens)."""
        txt = self.texts[int(self._txt_idx[self.order[i]])]
        return {"kind": "conversation", "images": [None], "turns": self._turns(txt)}

    def __getitem__(self, i: int) -> dict:
        i = int(self.order[i])
        img = self.images[int(self._img_idx[i])]
        txt = self.texts[int(self._txt_idx[i])]
        rid = f"{img.get('id')}+{txt.get('id')}"
        for rec in (img, txt):
            if rec.get("kind") == "bad":
                return {**rec, "id": rid}
        return {
            "kind": "conversation", "id": rid, "file": f"{img.get('file')} + {txt.get('file')}",
            "images": list(img.get("images") or [])[:1], "turns": self._turns(txt),
        }


def mir_sample_lengths(images, texts, *, tokenizer=None, num_samples: int = 100,
                       num_image_tokens: int = 16, system: str | None = None,
                       shuffle_seed: int | None = None, template: str = "vicuna_v1",
                       seed: int = 0, image_folder: str | None = None) -> np.ndarray:
    """[num_samples] int: each sample's token count, images expanded, before any truncation.

    Only the texts are read and tokenized (no image is loaded). A text record that cannot be
    rendered (a bad record) counts 0; the iterator skips and counts it as usual.
    """
    tokenizer = load_tokenizer(tokenizer)
    pairs = MirPairs(_image_source(images, 64, seed, image_folder), _text_source(texts, seed),
                     num_samples, shuffle_seed)
    lengths = np.zeros(num_samples, np.int64)
    for i in range(num_samples):
        record = pairs.text_record(i)
        if record["turns"][1][1] is None:
            continue
        try:
            segs = render(record, template, tokenizer, system)
        except SkipSample:
            continue
        lengths[i] = len(tokenize_segments(segs, tokenizer, num_image_tokens)[0])
    return lengths


def make_mir_iterator(images, texts, *, tokenizer=None, num_samples: int = 100,
                      image_size: int = 64, mean=CLIP_MEAN, std=CLIP_STD,
                      num_image_tokens: int = 16, batch_size: int = 8, seq_len: int = 256,
                      system: str | None = None, image_mode: str = "pad",
                      shuffle_seed: int | None = None, max_bad_fraction: float = 0.1,
                      num_threads: int = 4, template: str = "vicuna_v1",
                      sort_by_length: bool = False, length_bucket: int = 128, seed: int = 0,
                      image_folder: str | None = None, lengths=None):
    """Iterator over MIR evaluation batches (image + unrelated text, vicuna_v1).

    ``images``: a folder of images, a caption JSONL / LLaVA JSON file (its images),
    "synthetic", a list of paths/arrays, or any source whose records carry "images". A JSON/
    JSONL file whose records have no "caption" is read as LLaVA conversations / questions; its
    image paths are relative to ``image_folder`` (default: the file's folder).
    ``texts``: a folder or file of .story / .txt / JSONL {"text"} documents,
    "synthetic", a list of strings, or a text source (e.g. ``TFDSSource("cnn_dailymail", ...)``).
    ``template``: "vicuna_v1" (the MIR paper's), "plain" (image then text) or "chat" (the
    tokenizer's own chat template, with the image in the user turn).
    ``seed``: the synthetic corpus's seed (when images or texts are "synthetic").
    ``sort_by_length``: longest samples first, each batch [B, S_b] with S_b its longest row
    rounded up to ``length_bucket`` (at most ``seq_len``); otherwise every batch is [B, seq_len].
    ``lengths``: `mir_sample_lengths` of these arguments, when the caller has them already
    (the iterator is made once per pass; the texts need tokenizing only once).
    Bad pairs (missing image, ...) are skipped and counted, not replaced.
    The last batch is padded with empty rows.
    """
    tokenizer = load_tokenizer(tokenizer)
    order = None
    if sort_by_length and lengths is None:
        lengths = mir_sample_lengths(images, texts, tokenizer=tokenizer, num_samples=num_samples,
                                     num_image_tokens=num_image_tokens, system=system,
                                     shuffle_seed=shuffle_seed, template=template, seed=seed,
                                     image_folder=image_folder)
    if sort_by_length:
        order = np.argsort(-np.asarray(lengths), kind="stable")
    pairs = MirPairs(_image_source(images, image_size, seed, image_folder), _text_source(texts, seed),
                     num_samples, shuffle_seed, order=order)
    image_cfg = ImageConfig(size=image_size, mean=tuple(mean), std=tuple(std), mode=image_mode)
    pcfg = ProcessConfig(template=template, tokenizer=tokenizer, image=image_cfg,
                         num_image_tokens=num_image_tokens, seq_len=seq_len, max_images=1,
                         overlong="truncate", system=system)
    ds = grain.MapDataset.source(pairs).map(Processor(pcfg, 0))
    bcfg = BatchConfig(batch_size=batch_size, seq_len=seq_len, max_images=1, image_size=image_size,
                       pad_id=tokenizer.pad_id, mean=tuple(mean), std=tuple(std), pack=False,
                       pad_final_batch=True, length_bucket=length_bucket if sort_by_length else 0)
    cfg = {**DEFAULTS, "num_threads": num_threads, "max_bad_fraction": max_bad_fraction}
    return iter(_finish(ds, [pairs.name], [max_bad_fraction], cfg, bcfg))


def make_mir_batches(images, texts, **kwargs) -> list[dict[str, np.ndarray]]:
    """All MIR evaluation batches as a list (same arguments as make_mir_iterator)."""
    return list(make_mir_iterator(images, texts, **kwargs))
