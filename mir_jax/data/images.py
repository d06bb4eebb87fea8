"""Image loading and preprocessing.

Per sample (in grain's reader threads / worker processes) an image is decoded
to RGB and resized to ``[size, size, 3]`` uint8; normalization to float32 with
the encoder's mean/std happens once per batch in :func:`normalize`, which is
cheaper than per image and keeps 4x less data moving between processes.

Modes (``image_mode``):
* ``pad``  -- LLaVA's ``image_aspect_ratio="pad"``: pad to a square with the mean
  colour (``int(m * 255)`` per channel), then resize (bicubic).
* ``crop`` -- CLIP: resize the shorter side to ``size`` (bicubic), centre crop.
* ``resize`` -- squash to ``size x size`` (bicubic).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os

import numpy as np
from PIL import Image, UnidentifiedImageError

from .errors import CORRUPT_IMAGE, MISSING_IMAGE, SkipSample

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
IMAGE_MODES = ("pad", "crop", "resize")


@dataclasses.dataclass(frozen=True)
class ImageConfig:
    """Encoder input: square ``size`` px, per-channel ``mean``/``std`` in [0, 1] units."""

    size: int = 64
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    mode: str = "pad"
    jpeg_draft: bool = False  # decode large JPEGs at reduced scale (faster, slightly different)

    def __post_init__(self):
        if self.mode not in IMAGE_MODES:
            raise ValueError(f"image mode {self.mode!r} not in {IMAGE_MODES}")


def image_config_from_hf(path: str, mode: str = "pad") -> ImageConfig:
    """Read size/mean/std from a checkpoint's ``preprocessor_config.json``."""
    file = os.path.join(path, "preprocessor_config.json") if os.path.isdir(path) else path
    with open(file) as f:
        cfg = json.load(f)
    size = cfg.get("crop_size") or cfg.get("size") or 224
    if isinstance(size, dict):
        size = size.get("height") or size.get("shortest_edge") or next(iter(size.values()))
    return ImageConfig(
        size=int(size),
        mean=tuple(float(x) for x in cfg.get("image_mean", CLIP_MEAN)),
        std=tuple(float(x) for x in cfg.get("image_std", CLIP_STD)),
        mode=mode,
    )


def load_image(ref, size_hint: int | None = None, draft: bool = False) -> Image.Image:
    """Decode ``ref`` (path, bytes, uint8 array or PIL image) to an RGB PIL image.

    Raises SkipSample(missing_image) for a missing file and SkipSample(corrupt_image)
    for anything that does not fully decode (``load()`` catches truncated files).
    """
    if isinstance(ref, Image.Image):
        return ref.convert("RGB")
    if isinstance(ref, np.ndarray):
        arr = ref
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, -1)
        return Image.fromarray(np.asarray(arr, np.uint8)[..., :3])
    try:
        if isinstance(ref, (bytes, bytearray)):
            img = Image.open(io.BytesIO(ref))
        else:
            img = Image.open(ref)
        if draft and size_hint and img.format == "JPEG":
            img.draft("RGB", (size_hint, size_hint))
        img.load()
        return img.convert("RGB")
    except FileNotFoundError as e:
        raise SkipSample(MISSING_IMAGE, str(ref)) from e
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise SkipSample(CORRUPT_IMAGE, f"{ref if isinstance(ref, str) else '<bytes>'}: {e}") from e


def preprocess(img: Image.Image, cfg: ImageConfig) -> np.ndarray:
    """RGB PIL image -> uint8 [size, size, 3] by ``cfg.mode``."""
    size = cfg.size
    w, h = img.size
    if cfg.mode == "pad" and w != h:
        side = max(w, h)
        bg = tuple(int(m * 255) for m in cfg.mean)
        canvas = Image.new("RGB", (side, side), bg)
        canvas.paste(img, ((side - w) // 2, (side - h) // 2))
        img = canvas
    elif cfg.mode == "crop":
        scale = size / min(w, h)
        nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), Image.BICUBIC)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    if img.size != (size, size):
        img = img.resize((size, size), Image.BICUBIC)
    return np.asarray(img, dtype=np.uint8)


def load_and_preprocess(ref, cfg: ImageConfig) -> np.ndarray:
    """Any image reference -> uint8 [size, size, 3]; skips pass through as SkipSample."""
    if isinstance(ref, np.ndarray) and ref.shape == (cfg.size, cfg.size, 3) and ref.dtype == np.uint8:
        return ref  # already at the encoder's resolution (e.g. the synthetic corpus)
    return preprocess(load_image(ref, cfg.size, cfg.jpeg_draft), cfg)


def normalize(pixels: np.ndarray, mean, std, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 [..., 3] -> float32 ``(x / 255 - mean) / std`` (into ``out`` when given).

    Computed as one fused ``x * a + b`` with a = 1 / (255 std), b = -mean / std,
    writing in place: no float64 or full-size temporaries.
    """
    scale = (1.0 / (255.0 * np.asarray(std, np.float64))).astype(np.float32)
    shift = (-np.asarray(mean, np.float64) / np.asarray(std, np.float64)).astype(np.float32)
    if out is None:
        out = np.empty(pixels.shape, np.float32)
    elif not out.flags.c_contiguous:  # the row view below must alias ``out``
        out[...] = normalize(pixels, mean, std)
        return out
    out[...] = pixels  # the cast alone: a mixed uint8/float32 multiply is much slower
    # Broadcasting a 3-vector gives numpy an inner loop of length 3 (slow); view the
    # array as rows of W*3 values and tile mean/std along a row instead.
    w3 = pixels.shape[-2] * 3 if pixels.ndim >= 2 else 3
    rows = out.reshape(-1, w3)
    rows *= np.tile(scale, w3 // 3)
    rows += np.tile(shift, w3 // 3)
    return out
