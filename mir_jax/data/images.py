"""Image loading and preprocessing.

Per sample an image is decoded to RGB and resized to ``[size, size, 3]`` uint8; normalization
to float32 happens once per batch in :func:`normalize`.

Modes (``image_mode``):
* ``pad``  -- LLaVA's ``image_aspect_ratio="pad"``: pad to a square with the mean
  colour (``int(m * 255)`` per channel), then resize (bicubic).
* ``crop`` -- CLIP: resize the shorter side to ``size`` (or ``shortest_edge``; bicubic),
  centre crop to ``size``.
* ``resize`` -- squash to ``size x size`` (bicubic).
"""

from __future__ import annotations

import dataclasses
import glob
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
    """How an image becomes the encoder's input: the one preprocessing type of the project.

    size: the encoder's square input, px. mean/std: per channel, in [0, 1] units (`normalize`).
    mode: ``pad`` / ``crop`` / ``resize`` (see the module docstring). resample: PIL's filter code
    (3 = bicubic, what CLIP's and SigLIP's processors use). shortest_edge: ``crop`` mode resizes
    the shorter side to this before the centre crop to ``size`` (HF CLIP's ``size.shortest_edge``
    when it differs from ``crop_size``; None: ``size``). jpeg_draft: decode large JPEGs at
    reduced scale (faster, slightly different).
    """

    size: int = 64
    mean: tuple[float, float, float] = CLIP_MEAN
    std: tuple[float, float, float] = CLIP_STD
    mode: str = "pad"
    resample: int = 3  # PIL.Image.BICUBIC
    shortest_edge: int | None = None
    jpeg_draft: bool = False

    def __post_init__(self):
        if self.mode not in IMAGE_MODES:
            raise ValueError(f"image mode {self.mode!r} not in {IMAGE_MODES}")
        if self.shortest_edge is not None and self.shortest_edge < self.size:
            raise ValueError(f"image shortest_edge {self.shortest_edge} is smaller than the crop size {self.size}")


# ==============================================================================================
# The one reader of a checkpoint's preprocessor_config.json
# ==============================================================================================
def resolve_vision_tower(name: str, base: str) -> str:
    """The directory of an original-LLaVA checkpoint's `mm_vision_tower`: the name as a path,
    beside the checkpoint `base`, or a snapshot in the local HF cache (never downloaded)."""
    cands = [name, os.path.join(base, name), os.path.join(base, os.path.basename(name))]
    hub = os.environ.get("HF_HUB_CACHE") or os.path.join(
        os.environ.get("HF_HOME", os.path.expanduser("~/.cache/huggingface")), "hub")
    cands += sorted(glob.glob(os.path.join(hub, "models--" + name.replace("/", "--"), "snapshots", "*")))
    for c in cands:
        if os.path.isdir(c) and os.path.exists(os.path.join(c, "config.json")):
            return c
    raise FileNotFoundError(f"vision tower {name!r} not found locally (tried {cands}); pass vision_tower_path=")


def _preprocessor_file(path: str) -> tuple[str, bool]:
    """(preprocessor_config.json to read, whether the checkpoint pads images to a square).

    `path`: the file itself, an HF directory, or an original-LLaVA directory (no processor file
    of its own: its vision tower's, and its `image_aspect_ratio == "pad"`)."""
    if not os.path.isdir(path):
        return path, False
    file = os.path.join(path, "preprocessor_config.json")
    config = os.path.join(path, "config.json")
    if not os.path.exists(file) and os.path.exists(config):
        with open(config) as f:
            d = json.load(f)
        if "mm_vision_tower" in d:
            tower = resolve_vision_tower(d["mm_vision_tower"], path)
            return os.path.join(tower, "preprocessor_config.json"), d.get("image_aspect_ratio") == "pad"
    return file, False


def _square(value, what: str, file: str) -> int:
    """An HF size (int, {"height", "width"} or {"shortest_edge"}) as one side in px."""
    if isinstance(value, int):
        return value
    if "shortest_edge" in value:
        return int(value["shortest_edge"])
    if value.get("height") != value.get("width"):
        raise ValueError(f"{file}: {what} {value} is not square (the encoder takes square images)")
    return int(value["height"])


def image_config_from_hf(path: str, mode: str | None = "pad") -> ImageConfig:
    """The ImageConfig of a checkpoint's ``preprocessor_config.json`` (see `_preprocessor_file`
    for what `path` may be).

    size is the crop size when the processor centre-crops, else its resize size; a CLIP
    ``shortest_edge`` larger than the crop becomes `shortest_edge`. mode: as given (default
    ``pad``, LLaVA-1.5's training setting and the data pipeline's default), or None for what the
    checkpoint does: ``pad`` for an original-LLaVA ``image_aspect_ratio="pad"``, else ``crop``
    when it centre-crops, else ``resize``. Raises ValueError (one line) for a processor this
    pipeline cannot reproduce (a non-square size, a rescale other than 1/255)."""
    file, pads = _preprocessor_file(path)
    with open(file) as f:
        p = json.load(f)
    siglip = "siglip" in str(p.get("image_processor_type", "")).lower()
    resize = _square(p.get("size", 224), "size", file)
    crops = bool(p.get("do_center_crop", "crop_size" in p))  # HF CLIP crops unless told otherwise
    size = _square(p.get("crop_size", resize), "crop_size", file) if crops else resize
    if p.get("do_rescale", True) and abs(float(p.get("rescale_factor", 1 / 255)) - 1 / 255) > 1e-9:
        raise ValueError(f"{file}: rescale_factor {p['rescale_factor']} (the pipeline scales by 1/255)")
    mean, std = (SIGLIP_MEAN, SIGLIP_STD) if siglip else (CLIP_MEAN, CLIP_STD)
    if p.get("do_normalize", True):
        mean = tuple(float(x) for x in p.get("image_mean", mean))
        std = tuple(float(x) for x in p.get("image_std", std))
    else:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    if mode is None:
        mode = "pad" if pads else "crop" if crops else "resize"
    return ImageConfig(size=size, mean=mean, std=std, mode=mode, resample=int(p.get("resample", 3)),
                       shortest_edge=resize if crops and resize > size else None)


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
        short = cfg.shortest_edge or size
        scale = short / min(w, h)
        nw, nh = max(short, round(w * scale)), max(short, round(h * scale))
        if (nw, nh) != (w, h):
            img = img.resize((nw, nh), cfg.resample)
        left, top = (nw - size) // 2, (nh - size) // 2
        img = img.crop((left, top, left + size, top + size))
    if img.size != (size, size):
        img = img.resize((size, size), cfg.resample)
    return np.asarray(img, dtype=np.uint8)


def load_and_preprocess(ref, cfg: ImageConfig) -> np.ndarray:
    """Any image reference -> uint8 [size, size, 3]; skips pass through as SkipSample."""
    if isinstance(ref, np.ndarray) and ref.shape == (cfg.size, cfg.size, 3) and ref.dtype == np.uint8:
        return ref  # already at the encoder's resolution (e.g. the synthetic corpus)
    return preprocess(load_image(ref, max(cfg.size, cfg.shortest_edge or 0), cfg.jpeg_draft), cfg)


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
