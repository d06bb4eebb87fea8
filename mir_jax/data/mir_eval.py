"""MIR evaluation inputs: one image and one unrelated text per sample.

The MIR paper's setup (see shared spec, "Inputs"): each sample is an image
paired with an unrelated text (a CNN/DailyMail story before its first
``@highlight``), formatted with ``vicuna_v1`` as one user turn holding only the
image and one assistant turn holding the text::

    "{system} USER: <image>\\n ASSISTANT: {story}</s>"

Sample i pairs image i with text i (after an optional seeded shuffle of each
side). Batches follow the contract in ``pipeline.py``: the vision tokens of a
row are the K ``image_token_id`` positions; its text tokens are every real
position after the last of them. Stories longer than ``seq_len`` are truncated
(the image, which comes first, is always kept whole).
"""

from __future__ import annotations

import os

import grain
import numpy as np

from .images import CLIP_MEAN, CLIP_STD, ImageConfig
from .mixture import DEFAULTS, _finish
from .pipeline import BatchConfig, ProcessConfig, Processor
from .sources import CaptionSource, ImageFolderSource, ListSource, LlavaSource, TextSource
from .synthetic import SyntheticSource
from .tokenizer import IMAGE_TOKEN, load_tokenizer


def _image_source(images, image_size: int, seed: int):
    if isinstance(images, str):
        if images == "synthetic":
            return SyntheticSource("caption", num_samples=10_000, image_size=image_size,
                                   seed=seed, split="eval")
        if os.path.isdir(images):
            return ImageFolderSource(images)
        if images.endswith((".json", ".jsonl")):
            folder = os.path.dirname(images)
            return LlavaSource(images, folder) if images.endswith(".json") else CaptionSource(images, folder)
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
    """Random-access source of (image i, text i) conversation records."""

    def __init__(self, images, texts, num_samples: int, shuffle_seed: int | None = None):
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

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, i: int) -> dict:
        img = self.images[int(self._img_idx[i])]
        txt = self.texts[int(self._txt_idx[i])]
        rid = f"{img.get('id')}+{txt.get('id')}"
        for rec in (img, txt):
            if rec.get("kind") == "bad":
                return {**rec, "id": rid}
        text = txt.get("text")
        if text is None:
            text = txt.get("caption")
        return {
            "kind": "conversation", "id": rid, "file": f"{img.get('file')} + {txt.get('file')}",
            "images": list(img.get("images") or [])[:1],
            "turns": [("user", IMAGE_TOKEN + "\n"), ("assistant", text)],
        }


def make_mir_iterator(images, texts, *, tokenizer=None, num_samples: int = 100,
                      image_size: int = 64, mean=CLIP_MEAN, std=CLIP_STD,
                      num_image_tokens: int = 16, batch_size: int = 8, seq_len: int = 256,
                      system: str | None = None, image_mode: str = "pad",
                      shuffle_seed: int | None = None, max_bad_fraction: float = 0.1,
                      num_threads: int = 4, template: str = "vicuna_v1"):
    """Iterator over MIR evaluation batches (image + unrelated text, vicuna_v1).

    ``images``: a folder of images, a caption JSONL / LLaVA JSON file (its images),
    "synthetic", a list of paths/arrays, or any source whose records carry "images".
    ``texts``: a folder or file of .story / .txt / JSONL {"text"} documents,
    "synthetic", a list of strings, or a text source (e.g. ``TFDSSource("cnn_dailymail", ...)``).
    ``template``: "vicuna_v1" (the MIR paper's), "plain" (image then text) or "chat" (the
    tokenizer's own chat template, with the image in the user turn).
    Bad pairs (missing image, ...) are skipped and counted, not replaced.
    The last batch is padded with empty rows.
    """
    tokenizer = load_tokenizer(tokenizer)
    pairs = MirPairs(_image_source(images, image_size, 0), _text_source(texts, 0),
                     num_samples, shuffle_seed)
    image_cfg = ImageConfig(size=image_size, mean=tuple(mean), std=tuple(std), mode=image_mode)
    pcfg = ProcessConfig(template=template, tokenizer=tokenizer, image=image_cfg,
                         num_image_tokens=num_image_tokens, seq_len=seq_len, max_images=1,
                         overlong="truncate", system=system)
    ds = grain.MapDataset.source(pairs).map(Processor(pcfg, 0))
    bcfg = BatchConfig(batch_size=batch_size, seq_len=seq_len, max_images=1, image_size=image_size,
                       pad_id=tokenizer.pad_id, mean=tuple(mean), std=tuple(std), pack=False,
                       pad_final_batch=True)
    cfg = {**DEFAULTS, "num_threads": num_threads, "max_bad_fraction": max_bad_fraction}
    return iter(_finish(ds, [pairs.name], [max_bad_fraction], cfg, bcfg))


def make_mir_batches(images, texts, **kwargs) -> list[dict[str, np.ndarray]]:
    """All MIR evaluation batches as a list (same arguments as make_mir_iterator)."""
    return list(make_mir_iterator(images, texts, **kwargs))
