"""MIR from hidden states dumped to safetensors files, for any model (docs/mir.md, section 10).

`open_hidden_states` checks every file (headers and masks only) and indexes its samples;
`hidden_states_mir` computes MIR from a path in mode "streaming" (`stream_batches` into
`MIRAccumulator`, memory independent of the data) or "exact" (layer by layer through
`compute_mir`, the only mode with intervals). Any layout error, NaN or infinity is one
`HiddenStatesError` line naming the file and the sample.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import struct
import sys
import time
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np
from safetensors import SafetensorError, safe_open

from mir_jax.mir.kernel import compute_mir
from mir_jax.mir.methods import resolve_method
from mir_jax.mir.rules import MIRResult
from mir_jax.mir.streaming import MIRAccumulator
from mir_jax.mir.uncertainty import jackknife_groups, jackknife_interval, t_quantile

FORMAT = "mir-jax.hidden_states"
TENSORS = ("hidden_states", "vision_mask", "text_mask")
FLOAT_DTYPES = ("F32", "BF16", "F16")
MASK_DTYPES = ("BOOL", "U8", "I8", "I32", "I64")
MODES = ("streaming", "exact")
DEFAULT_BATCH_BYTES = 256 * 2**20  # rows per streaming batch as float32, both modalities


class HiddenStatesError(ValueError):
    """A hidden-states file that does not follow the layout (docs/mir.md, section 10)."""


@dataclasses.dataclass(frozen=True)
class Sample:
    """One sample: where its tensors are and which of its S positions MIR uses.

    vision / text: the selected positions, a `slice` when they are contiguous (the usual case:
    one image block, then the text), else an int64 index array.
    """

    file: str
    name: str
    vision: slice | np.ndarray
    text: slice | np.ndarray
    num_vision: int
    num_text: int


@dataclasses.dataclass(frozen=True)
class HiddenStatesIndex:
    """The checked contents of a file or directory of shards: layers L, dim D, first_layer (index of
    layer 1 in the stored arrays: 1 with embeddings, else 0), dtype, samples in reading order, files.
    """

    path: str
    files: tuple[str, ...]
    samples: tuple[Sample, ...]
    layers: int
    dim: int
    first_layer: int
    dtype: str
    file_bytes: int

    @property
    def num_vision(self) -> int:
        return sum(s.num_vision for s in self.samples)

    @property
    def num_text(self) -> int:
        return sum(s.num_text for s in self.samples)


def _shard_files(path: str) -> list[str]:
    if os.path.isdir(path):
        files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            raise HiddenStatesError(f"{path}: no *.safetensors files in this directory")
        return files
    if not os.path.exists(path):
        raise HiddenStatesError(f"{path}: no such file or directory")
    return [path]


def _raw_header(file: str) -> tuple[dict, int]:
    """The JSON header of a safetensors file and its length (the format's first 8 bytes)."""
    with open(file, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise HiddenStatesError(f"{file}: not a safetensors file ({len(head)} bytes)")
        (length,) = struct.unpack("<Q", head)
        if length > os.path.getsize(file) - 8:
            raise HiddenStatesError(f"{file}: not a safetensors file, or cut short inside its header")
        try:
            return json.loads(f.read(length)), length
        except ValueError:
            raise HiddenStatesError(f"{file}: not a safetensors file (unreadable header)") from None


def _open(file: str):
    """safe_open(file), a truncated file named with the first sample lying past its end."""
    try:
        return safe_open(file, framework="np")
    except SafetensorError as e:
        header, length = _raw_header(file)
        size = os.path.getsize(file) - 8 - length  # bytes of tensor data present
        past = sorted(k for k, v in header.items()
                      if k != "__metadata__" and v["data_offsets"][1] > size)
        if past:
            sample = past[0].rpartition("/")[0] or past[0]
            raise HiddenStatesError(f"{file}: truncated: sample {sample!r} lies past the end of the "
                                    f"file ({len(past)} tensor(s) cut)") from None
        raise HiddenStatesError(f"{file}: not a readable safetensors file ({e})") from None


def _positions(mask: np.ndarray) -> slice | np.ndarray:
    index = np.flatnonzero(mask)
    if index.size and index[-1] - index[0] + 1 == index.size:
        return slice(int(index[0]), int(index[-1]) + 1)
    return index


def _check_file(file: str, expected: dict) -> list[Sample]:
    """The samples of one file, checked; `expected` carries L+offset, D, dtype across files."""
    out = []
    with _open(file) as f:
        metadata = f.metadata() or {}
        embeddings = metadata.get("embeddings", "included")
        if embeddings not in ("included", "excluded"):
            raise HiddenStatesError(f"{file}: metadata embeddings={embeddings!r}; expected "
                                    "'included' (HF's L+1 states) or 'excluded' (layers 1..L)")
        first_layer = 1 if embeddings == "included" else 0
        samples: dict[str, dict[str, str]] = {}
        for key in f.keys():
            name, _, tensor = key.rpartition("/")
            if not name or tensor not in TENSORS:
                raise HiddenStatesError(f"{file}: tensor {key!r} is not SAMPLE/{'|'.join(TENSORS)}")
            samples.setdefault(name, {})[tensor] = key
        if not samples:
            raise HiddenStatesError(f"{file}: no samples in this file")
        for name in sorted(samples):
            where = f"{file}: sample {name!r}"
            missing = [t for t in TENSORS if t not in samples[name]]
            if missing:
                raise HiddenStatesError(f"{where}: no {', '.join(f'{name}/{t}' for t in missing)} "
                                        f"tensor (each sample needs {', '.join(TENSORS)})")
            states = f.get_slice(f"{name}/hidden_states")
            shape, dtype = tuple(states.get_shape()), states.get_dtype()
            if len(shape) != 3 or dtype not in FLOAT_DTYPES:
                raise HiddenStatesError(f"{where}: hidden_states is {dtype} {list(shape)}; expected "
                                        f"[L+1, S, D] (or [L, S, D]) of {'/'.join(FLOAT_DTYPES)}")
            layers = shape[0] - first_layer
            seen = (layers, shape[2], first_layer)
            expected.setdefault("shape", (seen, where))
            if seen != expected["shape"][0]:
                (l0, d0, o0), first = expected["shape"]
                raise HiddenStatesError(f"{where}: hidden_states {list(shape)} gives L={layers}, "
                                        f"D={shape[2]}; {first} gave L={l0}, D={d0}")
            expected.setdefault("dtype", dtype)
            masks = []
            for tensor in TENSORS[1:]:
                mask = f.get_slice(f"{name}/{tensor}")
                if tuple(mask.get_shape()) != shape[1:2] or mask.get_dtype() not in MASK_DTYPES:
                    raise HiddenStatesError(f"{where}: {tensor} is {mask.get_dtype()} "
                                            f"{list(mask.get_shape())}; expected bool [{shape[1]}]")
                values = mask[:]
                if not np.isin(values, (0, 1)).all():
                    raise HiddenStatesError(f"{where}: {tensor} holds values other than 0/1")
                masks.append(values.astype(bool))
            vision, text = masks
            if (vision & text).any():
                raise HiddenStatesError(f"{where}: position {int(np.flatnonzero(vision & text)[0])} "
                                        "is in both vision_mask and text_mask")
            if not vision.any() or not text.any():
                raise HiddenStatesError(f"{where}: no {'vision' if not vision.any() else 'text'} "
                                        "positions (MIR needs both in every sample)")
            out.append(Sample(file, name, _positions(vision), _positions(text),
                              int(vision.sum()), int(text.sum())))
    return out


def open_hidden_states(path: str) -> HiddenStatesIndex:
    """Checks a file or directory of shards (headers and masks only) and indexes its samples.

    Raises HiddenStatesError (one line naming the file and the sample) on any layout error.
    """
    files = _shard_files(path)
    expected: dict = {}
    samples = []
    for file in files:
        samples += _check_file(file, expected)
    names = [s.name for s in samples]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise HiddenStatesError(f"{path}: sample {dup!r} appears in more than one shard")
    (layers, dim, first_layer), _ = expected["shape"]
    if layers < 1:
        raise HiddenStatesError(f"{samples[0].file}: sample {samples[0].name!r}: no decoder layer")
    return HiddenStatesIndex(path, tuple(files), tuple(samples), layers, dim, first_layer,
                             expected["dtype"], sum(os.path.getsize(f) for f in files))


# --------------------------------------------------------------------------------------
# Reading.
# --------------------------------------------------------------------------------------


def _span(sample: Sample) -> tuple[int, int]:
    """The smallest [lo, hi) holding every selected position (read contiguously)."""
    ends = []
    for positions in (sample.vision, sample.text):
        if isinstance(positions, slice):
            ends += [positions.start, positions.stop]
        else:
            ends += [int(positions[0]), int(positions[-1]) + 1]
    return min(ends), max(ends)


def _shift(positions, lo: int):
    return slice(positions.start - lo, positions.stop - lo) if isinstance(positions, slice) else positions - lo


NUMPY_DTYPES = {"F32": np.dtype(np.float32), "BF16": np.dtype(jnp.bfloat16), "F16": np.dtype(np.float16)}
# Per dtype: the raw bits' type, the mask that drops the sign, and the smallest |x| pattern that is
# NaN or infinite (all exponent bits set): finiteness is one integer maximum, in the file's dtype.
_FINITE_BITS = {"float32": (np.uint32, 0x7FFFFFFF, 0x7F800000), "bfloat16": (np.uint16, 0x7FFF, 0x7F80),
                "float16": (np.uint16, 0x7FFF, 0x7C00)}


def _check_finite(rows: np.ndarray, sample: Sample, layer: int, kind: str) -> None:
    bits, no_sign, non_finite = _FINITE_BITS[rows.dtype.name]
    if rows.size and (rows.view(bits) & bits(no_sign)).max() >= non_finite:
        raise HiddenStatesError(f"{sample.file}: sample {sample.name!r}: NaN or infinite "
                                f"{kind} hidden states in layer {layer}")


def _read_layer(handle: "_MappedFile", sample: Sample, layer: int, first_layer: int):
    """(vision rows [k, D], text rows [t, D]) of one layer (1..L), in the file's dtype: views of
    the mapped file, so the caller's copy into its batch is the only copy."""
    lo, hi = _span(sample)
    states = handle.hidden_states(sample.name)[layer - 1 + first_layer, lo:hi]
    return states[_shift(sample.vision, lo)], states[_shift(sample.text, lo)]


class _MappedFile:
    """A checked safetensors file mapped read-only: each sample's hidden_states as an ndarray view.

    safetensors' own NumPy reader copies every slice it returns, and a pass then copies it again
    into its batch; reading views of the map halves the copies (BENCHMARKS.md, "Hidden states in").
    """

    def __init__(self, file: str):
        if sys.byteorder != "little":
            raise HiddenStatesError(f"{file}: safetensors data is little-endian; this host is not")
        with _open(file):  # a truncated or damaged file fails here, in one line
            pass
        self.header, length = _raw_header(file)
        self.data_start = 8 + length
        self.map = np.memmap(file, np.uint8, mode="r")

    def hidden_states(self, name: str) -> np.ndarray:
        entry = self.header[f"{name}/hidden_states"]
        begin, end = entry["data_offsets"]
        data = self.map[self.data_start + begin:self.data_start + end]
        return data.view(NUMPY_DTYPES[entry["dtype"]]).reshape(entry["shape"])


class _Files:
    """The files mapped (`_MappedFile`), one per file, released together."""

    def __init__(self, files):
        self.handles = {f: _MappedFile(f) for f in files}

    def __enter__(self):
        return self.handles

    def __exit__(self, *exc):
        self.handles.clear()  # the maps close when their last view goes


def _batch_rows(index: HiddenStatesIndex, batch_bytes: int) -> tuple[int, int]:
    """Vision and text rows per streaming batch: float32 [L, R, D] in `batch_bytes`, split in
    the proportion of the two modalities' totals (so both fill at about the same sample)."""
    n_v, n_t = index.num_vision, index.num_text
    total = max(2, batch_bytes // (4 * index.layers * index.dim))
    if total >= n_v + n_t:
        return n_v, n_t
    rows_v = min(n_v, max(1, round(total * n_v / (n_v + n_t))))
    return rows_v, min(n_t, max(1, total - rows_v))


def stream_batches(index: HiddenStatesIndex, batch_bytes: int = DEFAULT_BATCH_BYTES,
                   check_finite: bool = True) -> Iterator[tuple]:
    """One pass over the files as fixed-shape `MIRAccumulator.update` batches: (vision [L, R_v, D],
    text [L, R_t, D], vision_mask [R_v], text_mask [R_t]), NumPy in the files' dtype, the unfilled
    rows masked. A sample's rows may straddle batches; at most 1 + one sample's rows / R are open.
    """
    rows = {"vision": 0, "text": 0}
    rows["vision"], rows["text"] = _batch_rows(index, batch_bytes)
    shape = {k: (index.layers, r, index.dim) for k, r in rows.items()}
    dtype = NUMPY_DTYPES[index.dtype]

    def new_batch():
        return {k: np.empty(shape[k], dtype) for k in rows} | {"fill": {"vision": 0, "text": 0}}

    def finish(batch):
        out = []
        for k in ("vision", "text"):
            fill = batch["fill"][k]
            batch[k][:, fill:] = 0.0  # masked rows still enter sums as 0·x: they must be finite
            out.append(batch[k])
        masks = [np.arange(rows[k]) < batch["fill"][k] for k in ("vision", "text")]
        return (*out, *masks)

    current = new_batch()
    with _Files(index.files) as handles:
        for sample in index.samples:
            # Where this sample's rows go: (batch, modality, destination row, source rows).
            open_batches, plan = [current], []
            for kind, count in (("vision", sample.num_vision), ("text", sample.num_text)):
                at, done = 0, 0
                while done < count:
                    batch = open_batches[at]
                    take = min(count - done, rows[kind] - batch["fill"][kind])
                    if take > 0:
                        plan.append((batch, kind, batch["fill"][kind], done, done + take))
                        batch["fill"][kind] += take
                        done += take
                    if done < count:
                        at += 1
                        if at == len(open_batches):
                            open_batches.append(new_batch())
            for layer in range(1, index.layers + 1):
                parts = dict(zip(("vision", "text"), _read_layer(handles[sample.file], sample, layer,
                                                                 index.first_layer)))
                for batch, kind, dest, start, stop in plan:
                    batch[kind][layer - 1, dest:dest + stop - start] = parts[kind][start:stop]
                    if check_finite:
                        _check_finite(batch[kind][layer - 1, dest:dest + stop - start], sample, layer, kind)
            full = [b for b in open_batches
                    if b["fill"]["vision"] == rows["vision"] or b["fill"]["text"] == rows["text"]]
            for batch in full:
                yield finish(batch)
            last = open_batches[-1]
            current = new_batch() if any(b is last for b in full) else last
    if current["fill"]["vision"] or current["fill"]["text"]:
        yield finish(current)


def read_layer(index: HiddenStatesIndex, layer: int, handles: dict, check_finite: bool = True):
    """Layer `layer` (1..L) of every sample: (vision [N_v, D], text [N_t, D]) in the files' dtype
    (compute_mir widens them to float32), samples in order, and the sample number (0..) of each
    row: (vision_samples [N_v], text_samples [N_t])."""
    vision = np.empty((index.num_vision, index.dim), NUMPY_DTYPES[index.dtype])
    text = np.empty((index.num_text, index.dim), NUMPY_DTYPES[index.dtype])
    at = {"vision": 0, "text": 0}
    for sample in index.samples:
        parts = _read_layer(handles[sample.file], sample, layer, index.first_layer)
        for kind, out, part in zip(("vision", "text"), (vision, text), parts):
            out[at[kind]:at[kind] + len(part)] = part
            if check_finite:
                _check_finite(out[at[kind]:at[kind] + len(part)], sample, layer, kind)
            at[kind] += len(part)
    owners = [np.repeat(np.arange(len(index.samples)), [getattr(s, f"num_{k}") for s in index.samples])
              for k in ("vision", "text")]
    return vision, text, owners[0], owners[1]


# --------------------------------------------------------------------------------------
# MIR.
# --------------------------------------------------------------------------------------


@dataclasses.dataclass
class HiddenStatesMIR:
    """MIR of a hidden-states path: result (MIRResult, with intervals when asked for), the method
    resolved, mode, counts, the method's per-layer diagnostics, timings, and the index read."""

    result: MIRResult
    method: str
    mode: str
    num_samples: int
    num_vision_tokens: int
    num_text_tokens: int
    diagnostics: dict
    timings: dict
    index: HiddenStatesIndex
    num_groups: int | None = None


def _exact(index, method, normalize, remove_outliers, uncertainty, num_groups, level, check_finite):
    """Layer by layer: compute_mir on one layer of every sample (see the module docstring)."""
    per_layer, replicates, se, intervals, diagnostics, norms = [], [], [], [], [], []
    with _Files(index.files) as handles:
        for layer in range(1, index.layers + 1):
            vision, text, vision_samples, text_samples = read_layer(index, layer, handles, check_finite)
            groups = {}
            if uncertainty is not None:
                groups = dict(zip(("vision_groups", "text_groups"),
                                  jackknife_groups(vision_samples, text_samples, num_groups)))
            result, diag = compute_mir(vision[None], text[None], method=method, normalize=normalize,
                                       remove_outliers=remove_outliers, return_diagnostics=True,
                                       uncertainty=uncertainty, level=level, **groups)
            per_layer.append(np.asarray(result.per_layer)[0])
            norms.append((np.asarray(result.vision_norm_per_layer)[0],
                          np.asarray(result.text_norm_per_layer)[0]))
            diagnostics.append({k: np.asarray(v)[0] for k, v in diag.items()})
            if uncertainty is not None:
                replicates.append(np.asarray(result.per_layer_replicates)[:, 0])
                se.append(np.asarray(result.per_layer_se)[0])
                intervals.append(np.asarray(result.per_layer_interval)[0])
            del vision, text
    per_layer = np.asarray(per_layer, np.float32)
    overall = np.log10(per_layer.astype(np.float64).sum())
    diagnostics = {k: np.asarray([d[k] for d in diagnostics]) for k in diagnostics[0]}
    vision_norm, text_norm = np.asarray(norms, np.float32).T  # [L] each
    if uncertainty is None:
        return MIRResult(per_layer, np.float32(overall), vision_norm_per_layer=vision_norm,
                         text_norm_per_layer=text_norm), diagnostics
    replicates = np.stack(replicates, axis=1)  # [G, L]
    overall_replicates = np.log10(replicates.astype(np.float64).sum(axis=1))
    overall_se, overall_interval = jackknife_interval(
        overall, overall_replicates, t_quantile(level, replicates.shape[0]), np)
    return MIRResult(per_layer, np.float32(overall), np.asarray(se), np.stack(intervals),
                     np.float32(overall_se), overall_interval.astype(np.float32), replicates,
                     overall_replicates.astype(np.float32), vision_norm, text_norm), diagnostics


def hidden_states_mir(path: str, *, method: str = "auto", mode: str = "streaming",
                      normalize: bool = True, remove_outliers: bool = True,
                      uncertainty: str | None = None, num_groups: int = 10, level: float = 0.95,
                      batch_bytes: int = DEFAULT_BATCH_BYTES, check_finite: bool = True,
                      index: HiddenStatesIndex | None = None) -> HiddenStatesMIR:
    """MIR (per layer and overall) of the hidden states in `path` (a file or a shard directory).

    Args:
      method, normalize, remove_outliers: as in `compute_mir`.
      mode: "streaming" (MIRAccumulator, memory independent of the data) or "exact" (layer by
        layer, memory one layer of all samples' rows).
      uncertainty: None or "jackknife" (exact mode only): intervals over `num_groups` groups of
        samples at `level`.
      batch_bytes: float32 bytes of one streaming batch (both modalities).
      check_finite: refuse NaN / infinite values.
      index: an `open_hidden_states(path)` already made (skips the checks).
    Returns:
      HiddenStatesMIR (the MIRResult and the sample count).
    Raises:
      HiddenStatesError on a file that breaks the layout; ValueError on bad options.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if uncertainty is not None and mode != "exact":
        raise ValueError("intervals over samples need mode='exact' (layer by layer): the streaming "
                         "accumulator keeps no per-group statistics")
    start = time.perf_counter()
    index = index or open_hidden_states(path)
    timings = {"check_s": time.perf_counter() - start}
    if uncertainty is not None and not 2 <= num_groups <= len(index.samples):
        raise ValueError(f"num_groups={num_groups}: need 2 <= groups <= the {len(index.samples)} samples")
    if mode == "streaming":
        accumulator = MIRAccumulator(method=method, normalize=normalize, remove_outliers=remove_outliers)
        result = accumulator.run(lambda: stream_batches(index, batch_bytes, check_finite))
        diagnostics, resolved = accumulator.diagnostics, accumulator.method
        timings["passes"] = accumulator.num_passes
    else:
        resolved = resolve_method(method, index.num_vision, index.num_text, index.dim)
        result, diagnostics = _exact(index, resolved, normalize, remove_outliers, uncertainty,
                                     num_groups, level, check_finite)
    result = jax.tree.map(np.asarray, result)
    timings["total_s"] = time.perf_counter() - start
    return HiddenStatesMIR(result, resolved, mode, len(index.samples), index.num_vision,
                           index.num_text, {k: np.asarray(v) for k, v in diagnostics.items()},
                           timings, index, num_groups if uncertainty is not None else None)


def bytes_per_pass(index: HiddenStatesIndex) -> int:
    """Bytes of hidden states one pass reads (the selected spans of layers 1..L)."""
    itemsize = {"F32": 4, "BF16": 2, "F16": 2}[index.dtype]
    return sum(math.prod((index.layers, hi - lo, index.dim)) * itemsize
               for lo, hi in map(_span, index.samples))
