"""Data pipeline: sources, templates, tokenizers, the embedded corpus, and grain iterators.

The batch contract (keys, shapes, dtypes) is documented in ``mir_jax.data.pipeline``.
"""

from mir_jax.models.forward import IGNORE_INDEX

from .errors import BadSample, BadSampleFractionError, BadSampleStats, DataError, SkipSample
from .images import CLIP_MEAN, CLIP_STD, SIGLIP_MEAN, SIGLIP_STD, ImageConfig, image_config_from_hf
from .mir_inputs import MirPairs, make_mir_batches, make_mir_iterator, mir_sample_lengths
from .mixture import (
    build_dataset,
    make_eval_iterator,
    make_train_iterator,
    mm1_sources,
    resolve_config,
)
from .pipeline import BATCH_KEYS, BatchConfig, ProcessConfig, Processor, collate
from .sources import (
    CaptionSource,
    ImageFolderSource,
    InterleavedSource,
    JsonRecords,
    ListSource,
    LlavaSource,
    TextSource,
    TFDSSource,
    make_source,
    story_text,
)
from .synthetic import SyntheticSource
from .templates import VICUNA_SYSTEM, render, tokenize_segments
from .tokenizer import IMAGE_TOKEN, ByteTokenizer, HFTokenizer, load_tokenizer

__all__ = [
    "BATCH_KEYS", "CLIP_MEAN", "CLIP_STD", "IGNORE_INDEX", "IMAGE_TOKEN", "SIGLIP_MEAN",
    "SIGLIP_STD", "VICUNA_SYSTEM", "BadSample", "BadSampleFractionError", "BadSampleStats",
    "BatchConfig", "ByteTokenizer", "CaptionSource", "DataError", "HFTokenizer",
    "ImageConfig", "ImageFolderSource", "InterleavedSource", "JsonRecords", "ListSource",
    "LlavaSource", "MirPairs", "ProcessConfig", "Processor", "SkipSample", "SyntheticSource",
    "TFDSSource", "TextSource", "build_dataset", "collate", "image_config_from_hf",
    "load_tokenizer", "make_eval_iterator", "make_mir_batches", "make_mir_iterator",
    "mir_sample_lengths",
    "make_source", "make_train_iterator", "mm1_sources", "render", "resolve_config",
    "story_text", "tokenize_segments",
]
