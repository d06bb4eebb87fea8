"""Data config, the weighted source mixture, and the train/eval iterator constructors.

``data_config`` (an ml_collections ConfigDict or a dict; every key optional):

* ``sources``: source specs, each a dict with ``type`` (``sources.SOURCE_TYPES``) and its
  fields, plus ``weight`` (1), ``template`` (by type: llava and synthetic qa/text_qa ->
  vicuna_v1, captions -> plain, documents -> document), ``data_scale`` (the first N samples),
  ``overlong`` ("skip" / "truncate") and ``max_bad_fraction``. Default: the embedded MM1
  mixture (:func:`mm1_sources`).
* ``eval_sources``: the same for evaluation (default: ``sources``, synthetic ones on ``eval``).
* ``max_bad_fraction`` (0.1), ``bad_min_seen`` (50), ``log_first_bad`` (5);
* ``image_mode`` ("pad"), ``jpeg_draft`` (False), ``system`` (vicuna system prompt);
* ``pack`` (False), ``max_images`` (None: 1 for single-image mixtures without packing, else
  ``min(4, seq_len // (K + 2))``);
* ``num_threads`` (4), ``prefetch_buffer_size`` (64), ``num_workers`` (0),
  ``per_worker_buffer_size`` (2): grain ReadOptions / MultiprocessingOptions.

Mixing is grain's deterministic ``MapDataset.mix``: every window holds the sources in
proportion to their weights (bad samples are skipped after mixing). Each source is shuffled
with its own seed every epoch.
"""

from __future__ import annotations

import grain

from .images import CLIP_MEAN, CLIP_STD, ImageConfig
from .pipeline import (
    BatchConfig,
    PackBatchIterDataset,
    ProcessConfig,
    Processor,
    SkipBadIterDataset,
)
from .sources import make_source
from .tokenizer import load_tokenizer

DEFAULTS = {
    "sources": None,
    "eval_sources": None,
    "max_bad_fraction": 0.1,
    "bad_min_seen": 50,
    "log_first_bad": 5,
    "image_mode": "pad",
    "jpeg_draft": False,
    "system": None,
    "pack": False,
    "max_images": None,
    "num_threads": 4,
    "prefetch_buffer_size": 64,
    "num_workers": 0,
    "per_worker_buffer_size": 2,
}


def mm1_sources(num_samples: int = 100_000) -> list[dict]:
    """The embedded MM1 mixture: captions 45%, interleaved 45%, text-only 10%."""
    return [
        {"type": "synthetic", "kind": "caption", "weight": 0.45, "num_samples": num_samples},
        {"type": "synthetic", "kind": "interleaved", "weight": 0.45, "num_samples": num_samples},
        {"type": "synthetic", "kind": "text", "weight": 0.10, "num_samples": num_samples},
    ]


def resolve_config(data_config) -> dict:
    """data_config (a dict, or the trainer's ConfigDict: anything `dict()` takes) with the
    defaults filled in and sources as a list of plain dicts."""
    cfg = {**DEFAULTS, **dict(data_config or {})}
    unknown = set(cfg) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"unknown data config keys: {sorted(unknown)}")
    cfg["sources"] = [dict(s) for s in (cfg["sources"] or mm1_sources())]
    cfg["eval_sources"] = [dict(s) for s in (cfg["eval_sources"] or cfg["sources"])]
    return cfg


def default_template(spec: dict) -> str:
    t = spec.get("type")
    if t == "llava" or (t == "synthetic" and spec.get("kind") in ("qa", "text_qa")):
        return "vicuna_v1"
    if t in ("captions", "tfds") or (t == "synthetic" and spec.get("kind", "caption") == "caption"):
        return "plain"
    return "document"


def _multi_image(spec: dict) -> bool:
    return spec.get("type") in ("interleaved", "llava") or spec.get("kind") == "interleaved"


def _max_images(cfg: dict, specs, seq_len: int, num_image_tokens: int) -> int:
    if cfg["max_images"]:
        return int(cfg["max_images"])
    if not cfg["pack"] and not any(_multi_image(s) for s in specs):
        return 1
    return max(1, min(4, seq_len // (num_image_tokens + 2)))


def _source_seed(seed: int, index: int) -> int:
    return (seed * 1_000_003 + index * 7919 + 17) % 2**32


def _finish(ds, names, fractions, cfg, bcfg: BatchConfig):
    """MapDataset of examples/markers -> batched, checkpointable IterDataset."""
    it = ds.to_iter_dataset(grain.ReadOptions(num_threads=int(cfg["num_threads"]),
                                              prefetch_buffer_size=int(cfg["prefetch_buffer_size"])))
    if int(cfg["num_workers"]) > 0:
        from absl import flags

        # grain's workers read absl flags, unparsed outside an absl app: mark them parsed.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it = it.mp_prefetch(grain.MultiprocessingOptions(
            num_workers=int(cfg["num_workers"]),
            per_worker_buffer_size=int(cfg["per_worker_buffer_size"])))
    it = SkipBadIterDataset(it, names, fractions, cfg["bad_min_seen"], cfg["log_first_bad"])
    return PackBatchIterDataset(it, bcfg)


def build_dataset(data_config=None, *, tokenizer=None, image_size: int = 64, mean=CLIP_MEAN,
                  std=CLIP_STD, num_image_tokens: int = 16, batch_size: int = 8,
                  seq_len: int = 256, seed: int = 0, shard_index: int = 0, shard_count: int = 1,
                  split: str = "train", num_samples: int | None = None):
    """The batched grain IterDataset behind make_train_iterator / make_eval_iterator."""
    cfg = resolve_config(data_config)
    tokenizer = load_tokenizer(tokenizer)
    train = split == "train"
    specs = cfg["sources"] if train else cfg["eval_sources"]
    specs = [s for s in specs if float(s.get("weight", 1.0)) > 0]  # weight 0 switches a source off
    if not specs:
        raise ValueError("data config has no source with a positive weight")
    max_images = _max_images(cfg, specs, seq_len, num_image_tokens)
    image_cfg = ImageConfig(size=image_size, mean=tuple(mean), std=tuple(std),
                            mode=cfg["image_mode"], jpeg_draft=bool(cfg["jpeg_draft"]))
    datasets, weights, names, fractions = [], [], [], []
    for i, spec in enumerate(specs):
        src = make_source(spec, image_size=image_size, seed=seed, split=split)
        ds = grain.MapDataset.source(src)
        if spec.get("data_scale"):
            ds = ds[: int(spec["data_scale"])]
        ds = ds[shard_index::shard_count]
        if len(ds) == 0:
            raise ValueError(f"data source {src.name!r} has no samples for shard {shard_index}")
        if train:
            ds = ds.shuffle(seed=_source_seed(seed, i)).repeat()
        pcfg = ProcessConfig(
            template=spec.get("template") or default_template(spec), tokenizer=tokenizer,
            image=image_cfg, num_image_tokens=num_image_tokens, seq_len=seq_len,
            max_images=max_images, overlong=spec.get("overlong"), system=cfg["system"])
        datasets.append(ds.map(Processor(pcfg, i)))
        weights.append(float(spec.get("weight", 1.0)))
        names.append(spec.get("name") or src.name)
        fractions.append(float(spec.get("max_bad_fraction", cfg["max_bad_fraction"])))
    if len(set(names)) < len(names):  # keep names unique so error messages identify the source
        names = [f"{n}#{i}" for i, n in enumerate(names)]
    if len(datasets) == 1:
        ds = datasets[0]
    elif train:
        ds = grain.MapDataset.mix(datasets, weights)
    else:
        ds = grain.MapDataset.mix(datasets, weights) if num_samples else grain.MapDataset.concatenate(datasets)
    if not train and num_samples:
        ds = ds[: int(num_samples)]
    bcfg = BatchConfig(batch_size=batch_size, seq_len=seq_len, max_images=max_images,
                       image_size=image_size, pad_id=tokenizer.pad_id, mean=tuple(mean),
                       std=tuple(std), pack=bool(cfg["pack"]), pad_final_batch=not train)
    return _finish(ds, names, fractions, cfg, bcfg)


def make_train_iterator(data_config=None, *, tokenizer=None, image_size: int = 64, mean=CLIP_MEAN,
                        std=CLIP_STD, num_image_tokens: int = 16, batch_size: int = 8,
                        seq_len: int = 256, seed: int = 0, shard_index: int = 0,
                        shard_count: int = 1):
    """Infinite iterator of training batches (see pipeline.py for the batch contract).

    ``tokenizer``: None/"byte" (built-in), an HF tokenizer directory, or a tokenizer object.
    ``get_state()`` / ``set_state()`` round-trip exactly (JSON; with ``num_workers > 0`` one
    entry per worker, so resume with the same ``num_workers``). ``shard_index``/``shard_count``
    give each host a disjoint slice of every source.
    """
    return iter(build_dataset(data_config, tokenizer=tokenizer, image_size=image_size, mean=mean,
                              std=std, num_image_tokens=num_image_tokens, batch_size=batch_size,
                              seq_len=seq_len, seed=seed, shard_index=shard_index,
                              shard_count=shard_count, split="train"))


def make_eval_iterator(data_config=None, *, tokenizer=None, image_size: int = 64, mean=CLIP_MEAN,
                       std=CLIP_STD, num_image_tokens: int = 16, batch_size: int = 8,
                       seq_len: int = 256, seed: int = 0, shard_index: int = 0,
                       shard_count: int = 1, num_samples: int | None = 256):
    """Finite, unshuffled iterator over a fixed evaluation set (the same every call).

    The first ``num_samples`` records of the ``eval_sources`` mixture (None: all records,
    concatenated); skipped bad records are not replaced. The last batch is padded with
    empty rows (attention_mask 0).
    """
    return iter(build_dataset(data_config, tokenizer=tokenizer, image_size=image_size, mean=mean,
                              std=std, num_image_tokens=num_image_tokens, batch_size=batch_size,
                              seq_len=seq_len, seed=seed, shard_index=shard_index,
                              shard_count=shard_count, split="eval", num_samples=num_samples))
