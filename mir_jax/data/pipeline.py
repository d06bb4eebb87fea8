"""Per-sample processing, bad-sample skipping, packing and batching on grain.

Batch contract (every iterator of this package yields dicts of NumPy arrays):

==================  =====================  ===============================================
key                 shape / dtype          meaning
==================  =====================  ===============================================
``input_ids``       [B, S] int32           tokens; each image already expanded into K
                                           consecutive ``image_token_id`` tokens; pad_id
                                           after the last real token
``labels``          [B, S] int32           the token id where a loss applies (assistant
                                           turns; plain: caption + eos; documents: all
                                           text + eos), -100 elsewhere; unshifted (the
                                           train step shifts). The first token of every
                                           example is -100 (nothing predicts it).
``attention_mask``  [B, S] int32           1 real token, 0 padding
``segment_ids``     [B, S] int32           0 padding, 1..n for the n examples packed into
                                           a row (= attention_mask without packing)
``positions``       [B, S] int32           0.. restarting per segment; 0 on padding
``pixel_values``    [B, M, H, W, 3] f32    NHWC, ``(x/255 - mean) / std``; zeros in
                                           unused slots
``image_mask``      [B, M] bool            slot holds a real image; real images fill the
                                           first slots of a row in token order
==================  =====================  ===============================================

K = ``num_image_tokens``, S = ``seq_len``, M = ``max_images``, H = W = image size.
Truncation (``overlong="truncate"``) never cuts an image's K tokens: the cut moves
to just before the image and the image is dropped. An example never spans rows.
The stages of the pipeline: docs/evaluation.md, "Data".
"""

from __future__ import annotations

import dataclasses

import grain
import numpy as np

from mir_jax.models.forward import IGNORE_INDEX

from .errors import (
    EMPTY_TEXT,
    TOO_LONG,
    TOO_MANY_IMAGES,
    BadSample,
    BadSampleStats,
    SkipSample,
)
from .images import ImageConfig, load_and_preprocess, normalize
from .templates import render, tokenize_segments

BATCH_KEYS = ("input_ids", "labels", "attention_mask", "segment_ids", "positions",
              "pixel_values", "image_mask")
OVERLONG = ("skip", "truncate")


@dataclasses.dataclass(frozen=True)
class ProcessConfig:
    """How one source's records become examples.

    ``overlong``: "skip" (count as too_long) or "truncate"; None picks by record
    kind: truncate text and interleaved documents, skip conversations and captions.
    """

    template: str
    tokenizer: object
    image: ImageConfig
    num_image_tokens: int
    seq_len: int
    max_images: int
    overlong: str | None = None
    system: str | None = None


class Processor:
    """record -> example dict, or a BadSample marker for a skipped record.

    Example: ``input_ids`` int32 [L], ``labels`` int32 [L] (L <= seq_len),
    ``images`` uint8 [n, H, W, 3] in token order, ``source`` int.
    """

    def __init__(self, cfg: ProcessConfig, source: int):
        self.cfg = cfg
        self.source = source

    def __call__(self, record):
        try:
            return self._process(record)
        except SkipSample as e:
            return BadSample(self.source, e.reason, str(record.get("file", "")),
                             str(record.get("id", "")), e.detail, e.length, e.limit)

    def _process(self, record) -> dict:
        cfg = self.cfg
        if record.get("kind") == "bad":
            raise SkipSample(record["reason"], record.get("detail", ""))
        k = cfg.num_image_tokens
        segs = render(record, cfg.template, cfg.tokenizer, cfg.system)
        ids, loss, runs = tokenize_segments(segs, cfg.tokenizer, k)
        overlong = cfg.overlong or ("truncate" if record["kind"] in ("text", "interleaved") else "skip")
        cut, truncated = len(ids), False
        if len(runs) > cfg.max_images:
            if overlong == "skip":
                raise SkipSample(TOO_MANY_IMAGES, f"{len(runs)} images > {cfg.max_images}")
            cut, truncated = runs[cfg.max_images][0], True
        if cut > cfg.seq_len:
            if overlong == "skip":
                raise SkipSample(TOO_LONG, f"{len(ids)} tokens > {cfg.seq_len}", length=len(ids),
                                 limit=cfg.seq_len)
            cut, truncated = cfg.seq_len, True
            for start, _ in runs:
                if start < cut < start + k:
                    cut = start  # never split an image: drop it whole
        ids_arr = np.asarray(ids[:cut], np.int32)
        labels = np.where(np.asarray(loss[:cut], bool), ids_arr, IGNORE_INDEX).astype(np.int32)
        if cut:
            labels[0] = IGNORE_INDEX
        if not (labels != IGNORE_INDEX).any():
            raise SkipSample(TOO_LONG if truncated else EMPTY_TEXT, "no loss tokens left",
                             length=len(ids) if truncated and len(ids) > cfg.seq_len else 0,
                             limit=cfg.seq_len)
        refs = record.get("images") or []
        images = [load_and_preprocess(refs[idx], cfg.image) for start, idx in runs if start + k <= cut]
        size = cfg.image.size
        pixels = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
        return {"input_ids": ids_arr, "labels": labels, "images": pixels, "source": self.source}


# ---------------------------------------------------------------------------
# Skipping bad samples (main process).


class SkipBadIterDataset(grain.IterDataset):
    """Drops BadSample markers, counting them per source and reason (see errors.py)."""

    def __init__(self, parent, source_names, max_bad_fraction=0.1, min_seen=50, log_first=5):
        super().__init__(parent)
        self._args = (list(source_names), max_bad_fraction, min_seen, log_first)

    def __iter__(self):
        return _SkipBadIterator(self._parent.__iter__(), BadSampleStats(*self._args))


class _SkipBadIterator(grain.DatasetIterator):
    def __init__(self, parent, stats: BadSampleStats):
        super().__init__(parent)
        self.stats = stats

    def __next__(self):
        while True:
            try:
                x = next(self._parent)
            except StopIteration:
                self.stats.check_all(final=True)
                raise
            if isinstance(x, BadSample):
                self.stats.count_bad(x)
                continue
            self.stats.count_good(int(x["source"]))
            return x

    def get_state(self):
        return {"parent": self._parent.get_state(), "bad_samples": self.stats.get_state()}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self.stats.set_state(state["bad_samples"])


# ---------------------------------------------------------------------------
# Packing and batching (main process).


@dataclasses.dataclass(frozen=True)
class BatchConfig:
    batch_size: int
    seq_len: int
    max_images: int
    image_size: int
    pad_id: int
    mean: tuple
    std: tuple
    pack: bool = False
    pad_final_batch: bool = False  # finite (eval) streams: pad the last batch with empty rows
    # > 0: each batch is only as long as its longest row, rounded up to a multiple of this
    # (at most seq_len). For length-sorted evaluation streams: little padding, few shapes.
    length_bucket: int = 0


def collate(rows: list[list[dict]], cfg: BatchConfig) -> dict[str, np.ndarray]:
    """Rows (each a list of examples packed together) -> a batch (see module docstring)."""
    b, s, m, h = cfg.batch_size, cfg.seq_len, cfg.max_images, cfg.image_size
    if cfg.length_bucket > 0:
        longest = max(sum(len(ex["input_ids"]) for ex in row) for row in rows)
        s = min(s, -(-max(longest, 1) // cfg.length_bucket) * cfg.length_bucket)
    input_ids = np.full((b, s), cfg.pad_id, np.int32)
    labels = np.full((b, s), IGNORE_INDEX, np.int32)
    segment_ids = np.zeros((b, s), np.int32)
    positions = np.zeros((b, s), np.int32)
    image_mask = np.zeros((b, m), bool)
    pixel_values = np.zeros((b, m, h, h, 3), np.float32)
    for r, row in enumerate(rows):
        off = slot = 0
        for k, ex in enumerate(row):
            n = len(ex["input_ids"])
            input_ids[r, off:off + n] = ex["input_ids"]
            labels[r, off:off + n] = ex["labels"]
            segment_ids[r, off:off + n] = k + 1
            positions[r, off:off + n] = np.arange(n, dtype=np.int32)
            off += n
            for img in ex["images"]:
                normalize(img, cfg.mean, cfg.std, out=pixel_values[r, slot])
                image_mask[r, slot] = True
                slot += 1
    return {
        "input_ids": input_ids,
        "labels": labels,
        "attention_mask": (segment_ids > 0).astype(np.int32),
        "segment_ids": segment_ids,
        "positions": positions,
        "pixel_values": pixel_values,
        "image_mask": image_mask,
    }


class PackBatchIterDataset(grain.IterDataset):
    """Examples -> fixed-shape batches, one example per row or greedily packed.

    Packing fills a row in stream order until the next example's tokens or
    images do not fit; that example starts the next row. Checkpointing: the
    held-over example is not stored; the state is the parent's state from
    before it was read, so a restored iterator reads it again.
    """

    def __init__(self, parent, cfg: BatchConfig):
        super().__init__(parent)
        self._cfg = cfg

    def __iter__(self):
        return _PackBatchIterator(self._parent.__iter__(), self._cfg)


class _PackBatchIterator(grain.DatasetIterator):
    def __init__(self, parent, cfg: BatchConfig):
        super().__init__(parent)
        self._cfg = cfg
        self._held = None
        self._held_state = None
        self._done = False

    @property
    def bad_samples(self) -> dict:
        """Per-source seen/bad counts, {name: {"seen", "bad", "reasons"}}."""
        return self._parent.stats.summary()

    def _peek(self):
        if self._held is None and not self._done:
            state = self._parent.get_state() if self._cfg.pack else None
            try:
                self._held = next(self._parent)
                self._held_state = state
            except StopIteration:
                self._done = True
        return self._held

    def _take(self):
        ex, self._held, self._held_state = self._held, None, None
        return ex

    def _row(self) -> list[dict]:
        cfg = self._cfg
        if self._peek() is None:
            return []
        if not cfg.pack:
            return [self._take()]
        row, used, imgs = [], 0, 0
        while (ex := self._peek()) is not None:
            n, k = len(ex["input_ids"]), len(ex["images"])
            if row and (used + n > cfg.seq_len or imgs + k > cfg.max_images):
                break
            row.append(self._take())
            used, imgs = used + n, imgs + k
        return row

    def __next__(self):
        rows = []
        while len(rows) < self._cfg.batch_size:
            row = self._row()
            if not row:
                break
            rows.append(row)
        if not rows or (len(rows) < self._cfg.batch_size and not self._cfg.pad_final_batch):
            raise StopIteration
        return collate(rows, self._cfg)

    def get_state(self):
        if self._held is not None:
            return {"parent": self._held_state}
        return {"parent": self._parent.get_state()}

    def set_state(self, state):
        self._parent.set_state(state["parent"])
        self._held = self._held_state = None
        self._done = False
