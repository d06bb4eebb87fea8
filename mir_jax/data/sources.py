"""Data sources: random-access sequences of normalized records (see ``templates.py``).

Every source has ``name``, ``__len__`` and ``__getitem__`` (for ``grain.MapDataset.source``).
JSON/JSONL files are parsed once at construction; a bad record raises ``SkipSample`` when
accessed. Images are absolute paths, encoded bytes or uint8 arrays, decoded in ``pipeline.py``.
"""

from __future__ import annotations

import glob
import json
import os

import numpy as np

from .errors import BAD_RECORD, EMPTY_TEXT, UNREADABLE_TEXT, DataError, SkipSample
from .synthetic import SyntheticSource

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
TEXT_EXTENSIONS = (".story", ".txt", ".jsonl", ".json")


def json_lines(path: str, data: bytes):
    """(line number, raw line, object) of each non-empty line of JSON Lines text; a malformed
    line or one that is not an object is a DataError naming ``path:line``."""
    for lineno, line in enumerate(data.splitlines(), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: malformed JSON ({e.msg})") from e
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object")
        yield lineno, line, obj


class JsonRecords:
    """The JSON objects of a ``.json`` (array) or ``.jsonl`` file, stored compactly.

    ``record_line(i)`` is the 1-based line of record i in a JSONL file, or None
    for a JSON array (whose records have no line of their own).
    """

    def __init__(self, path: str):
        self.file = os.fspath(path)
        try:
            with open(self.file, "rb") as f:
                data = f.read()
        except OSError as e:
            raise DataError(f"cannot read {self.file}: {e}") from e
        chunks: list[bytes] = []
        lines: list[int] = []
        if self.file.endswith(".jsonl"):
            for lineno, line, _ in json_lines(self.file, data):
                chunks.append(line.strip())
                lines.append(lineno)
        else:
            try:
                objs = json.loads(data)
            except json.JSONDecodeError as e:
                raise DataError(f"{self.file}:{e.lineno}: malformed JSON ({e.msg})") from e
            if not isinstance(objs, list):
                raise DataError(f"{self.file}: expected a JSON array of records")
            chunks = [json.dumps(o, ensure_ascii=False).encode() for o in objs]
            lines = [0] * len(chunks)
        self._blob = b"".join(chunks)
        self._offsets = np.cumsum([0] + [len(c) for c in chunks]).astype(np.int64)
        self._lines = np.asarray(lines, np.int64)

    def __len__(self) -> int:
        return len(self._lines)

    def __getitem__(self, i: int) -> dict:
        return json.loads(self._blob[self._offsets[i]: self._offsets[i + 1]])

    def record_line(self, i: int) -> int | None:
        return int(self._lines[i]) or None

    def where(self, i: int) -> str:
        line = self.record_line(i)
        return f"{self.file}:{line}" if line else f"{self.file}[{i}]"


def _resolve(image, image_folder: str | None):
    if not isinstance(image, str):
        raise SkipSample(BAD_RECORD, f"image reference {image!r} is not a path")
    return image if os.path.isabs(image) or not image_folder else os.path.join(image_folder, image)


class _JsonSource:
    def __init__(self, path: str, image_folder: str | None = None, name: str | None = None):
        self.records = JsonRecords(path)
        self.image_folder = image_folder
        self.name = name or os.path.splitext(os.path.basename(path))[0]

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict:
        i = int(i)
        raw = self.records[i]
        rid = str(raw.get("id", i))
        base = {"id": rid, "file": self.records.where(i)}
        try:
            return {**base, **self._normalize(raw)}
        except SkipSample as e:
            # The template stage turns a "bad" record into a skip with its file and id.
            return {**base, "kind": "bad", "reason": e.reason, "detail": e.detail}
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            return {**base, "kind": "bad", "reason": BAD_RECORD, "detail": repr(e)}


class LlavaSource(_JsonSource):
    """LLaVA conversation JSON/JSONL: ``{"id", "image"?, "conversations": [{"from", "value"}]}``.

    Covers LCS-558K and llava_v1_5_mix665k. No "image" means a text-only
    conversation; "image" may also be a list (multi-image variants).
    """

    def _normalize(self, raw: dict) -> dict:
        image = raw.get("image")
        images = [] if image is None else [image] if isinstance(image, str) else list(image)
        turns = [(t["from"], t["value"]) for t in raw.get("conversations") or []]
        return {"kind": "conversation", "images": [_resolve(x, self.image_folder) for x in images],
                "turns": turns}


class CaptionSource(_JsonSource):
    """Caption pairs, JSONL ``{"image", "caption"}`` (a JSON array also works)."""

    def _normalize(self, raw: dict) -> dict:
        return {"kind": "caption", "images": [_resolve(raw["image"], self.image_folder)],
                "caption": raw["caption"]}


class InterleavedSource(_JsonSource):
    """Interleaved documents (several images per sequence), JSONL in one of three layouts.

    * ``{"segments": [{"text": ...}, {"image": "path"}, ...]}`` (ordered);
    * OBELICS: ``{"texts": [...], "images": [...]}`` parallel lists, one of each pair null;
    * MMC4: ``{"text_list": [...], "image_info": [{"image_name", "matched_text_index"}]}``,
      each image placed before the sentence it is matched to.
    """

    def _normalize(self, raw: dict) -> dict:
        items: list[tuple[str, str]] = []  # ("text" | "image", value)
        if "segments" in raw:
            for seg in raw["segments"]:
                items.append(("image", seg["image"]) if "image" in seg else ("text", seg["text"]))
        elif "texts" in raw:
            for text, image in zip(raw["texts"], raw["images"]):
                if image is not None:
                    items.append(("image", image))
                if text is not None:
                    items.append(("text", text))
        elif "text_list" in raw:
            before: dict[int, list[str]] = {}
            for info in raw.get("image_info") or []:
                before.setdefault(int(info["matched_text_index"]), []).append(info["image_name"])
            for k, text in enumerate(raw["text_list"]):
                items += [("image", im) for im in before.get(k, [])]
                items.append(("text", (" " if k else "") + text))
        else:
            raise SkipSample(BAD_RECORD, "no segments/texts/text_list field")
        images, segments = [], []
        for kind, value in items:
            if kind == "image":
                segments.append({"image": len(images)})
                images.append(_resolve(value, self.image_folder))
            else:
                segments.append({"text": value})
        return {"kind": "interleaved", "images": images, "segments": segments}


def story_text(raw: str) -> str:
    """A CNN/DailyMail ``.story`` file's article: the text before the first ``@highlight``."""
    return raw.split("@highlight", 1)[0].strip()


class TextSource:
    """Text-only documents from JSONL ``{"text"}``, ``.txt`` or ``.story`` files.

    A ``.txt`` file is one document; a ``.story`` file (CNN/DailyMail, as the MIR paper uses)
    gives its text before the first ``@highlight``. ``path``: a file, a folder (one level,
    sorted) or a glob pattern.
    """

    def __init__(self, path: str, name: str | None = None, text_key: str = "text"):
        path = os.fspath(path)
        if os.path.isdir(path):
            files = sorted(f for f in glob.glob(os.path.join(path, "*")) if f.endswith(TEXT_EXTENSIONS))
        elif any(ch in path for ch in "*?["):
            files = sorted(glob.glob(path))
        else:
            files = [path]
        if not files:
            raise DataError(f"no text files (.story/.txt/.jsonl) found at {path}")
        self.name = name or os.path.splitext(os.path.basename(path.rstrip("/")))[0]
        self.text_key = text_key
        self._entries: list[tuple[str, int]] = []  # (file, record index or -1 for a whole file)
        self._json: dict[str, JsonRecords] = {}
        for f in files:
            if f.endswith((".jsonl", ".json")):
                recs = JsonRecords(f)
                self._json[f] = recs
                self._entries += [(f, i) for i in range(len(recs))]
            else:
                self._entries.append((f, -1))

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, i: int) -> dict:
        file, k = self._entries[int(i)]
        if k >= 0:
            recs = self._json[file]
            raw = recs[k]
            rid, where = str(raw.get("id", k)), recs.where(k)
            text = raw.get(self.text_key)
            if not isinstance(text, str):
                return {"kind": "bad", "id": rid, "file": where, "reason": BAD_RECORD,
                        "detail": f"no {self.text_key!r} string"}
            return {"kind": "text", "id": rid, "file": where, "text": text}
        rid = os.path.splitext(os.path.basename(file))[0]
        try:
            with open(file, encoding="utf-8") as fh:
                raw = fh.read()
        except (OSError, UnicodeDecodeError) as e:
            return {"kind": "bad", "id": rid, "file": file, "reason": UNREADABLE_TEXT, "detail": str(e)}
        text = story_text(raw) if file.endswith(".story") else raw.strip()
        if not text:
            return {"kind": "bad", "id": rid, "file": file, "reason": EMPTY_TEXT, "detail": ""}
        return {"kind": "text", "id": rid, "file": file, "text": text}


class ImageFolderSource:
    """Every image file in a folder (sorted by name), as records with one image and no text."""

    def __init__(self, path: str, name: str | None = None):
        self.files = sorted(
            os.path.join(path, f) for f in os.listdir(path) if f.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not self.files:
            raise DataError(f"no image files found in {path}")
        self.name = name or os.path.basename(os.path.normpath(path))

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> dict:
        f = self.files[int(i)]
        return {"kind": "image", "id": os.path.basename(f), "file": f, "images": [f]}


class ListSource:
    """In-memory records (already normalized dicts) or plain strings (text records)."""

    def __init__(self, items, name: str = "list"):
        self.items = list(items)
        self.name = name

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        item = self.items[int(i)]
        if isinstance(item, str):
            return {"kind": "text", "id": str(i), "file": f"<{self.name}>", "text": item}
        return {"id": str(i), "file": f"<{self.name}>", **item}


# TFDS datasets the source knows how to read without a field map.
_TFDS_FIELDS = {
    "coco_captions": {"kind": "caption", "image": "image", "caption": "captions/text"},
    "cnn_dailymail": {"kind": "text", "text": "article"},
}


def _get_field(example, path: str):
    for key in path.split("/"):
        example = example[key]
    return example


class TFDSSource:
    """A TFDS dataset read by name from a local ``data_dir``; nothing is downloaded.

    Needs the ``tfds`` extra and data built as ArrayRecord (``tfds build NAME
    --data_dir=DIR --file_format=array_record``) for random access. ``fields`` maps record
    fields to feature paths, e.g. ``{"kind": "caption", "image": "image", "caption":
    "captions/text"}`` (known for coco_captions and cnn_dailymail); a list of captions gives
    its first.
    """

    def __init__(self, name: str, *, data_dir: str, split: str = "train", fields: dict | None = None):
        try:
            import tensorflow_datasets as tfds
        except ImportError as e:
            raise DataError(
                f"TFDS source {name!r} needs tensorflow-datasets, which is not installed; "
                "install the optional extra: pip install 'mir-jax[tfds]'"
            ) from e
        self.fields = dict(fields or _TFDS_FIELDS.get(name.split(":")[0].split("/")[0]) or {})
        if "kind" not in self.fields:
            raise DataError(f"TFDS source {name!r}: give fields=... (kind and feature paths)")
        self.name, self.split = name, split
        try:
            self._ds = tfds.data_source(name, split=split, data_dir=data_dir, download=False)
        except Exception as e:  # TFDS raises several types for unprepared data
            raise DataError(
                f"TFDS dataset {name!r} split {split!r} is not prepared as ArrayRecord in {data_dir}: {e}. "
                f"Prepare it with: tfds build {name} --data_dir={data_dir} --file_format=array_record"
            ) from e

    def __len__(self) -> int:
        return len(self._ds)

    def __getitem__(self, i: int) -> dict:
        ex = self._ds[int(i)]
        f = self.fields
        base = {"id": f"{self.name}/{self.split}/{i}", "file": f"tfds:{self.name}"}

        def text(path):
            v = _get_field(ex, path)
            if isinstance(v, (list, tuple, np.ndarray)) and not isinstance(v, (bytes, str)):
                v = v[0]
            return v.decode("utf-8") if isinstance(v, bytes) else str(v)

        if f["kind"] == "text":
            return {**base, "kind": "text", "text": text(f["text"])}
        return {**base, "kind": "caption", "images": [np.asarray(_get_field(ex, f["image"]))],
                "caption": text(f["caption"])}


SOURCE_TYPES = ("llava", "captions", "interleaved", "text", "tfds", "synthetic", "images")


def make_source(spec: dict, *, image_size: int = 64, seed: int = 0, split: str = "train"):
    """Build a source from a config dict ``{"type": ..., "path": ..., ...}`` (types: SOURCE_TYPES).

    Synthetic sources take ``kind``/``num_samples`` and get ``image_size``,
    ``seed`` and ``split`` from the caller; TFDS sources take ``name``,
    ``data_dir``, ``split`` (default: the caller's) and ``fields``.
    """
    spec = dict(spec)
    kind = spec.get("type")
    name = spec.get("name")
    if kind == "llava":
        return LlavaSource(spec["path"], spec.get("image_folder"), name)
    if kind == "captions":
        return CaptionSource(spec["path"], spec.get("image_folder"), name)
    if kind == "interleaved":
        return InterleavedSource(spec["path"], spec.get("image_folder"), name)
    if kind == "text":
        return TextSource(spec["path"], name, spec.get("text_key", "text"))
    if kind == "images":
        return ImageFolderSource(spec["path"], name)
    if kind == "tfds":
        return TFDSSource(spec["name"], data_dir=spec["data_dir"],
                          split=spec.get("split", split), fields=spec.get("fields"))
    if kind == "synthetic":
        src = SyntheticSource(spec.get("kind", "caption"), num_samples=spec.get("num_samples", 100_000),
                              image_size=image_size, seed=spec.get("seed", seed), split=split,
                              questions=spec.get("questions"), wrong_answers=spec.get("wrong_answers", 0.0),
                              max_turns=spec.get("max_turns", 2),
                              distinct_questions=spec.get("distinct_questions", False))
        if name:
            src.name = name
        return src
    raise ValueError(f"unknown source type {kind!r}; expected one of {SOURCE_TYPES}")
