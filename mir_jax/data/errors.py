"""Bad-input accounting for the data pipeline.

* A *bad sample* (missing or corrupt image, empty conversation, an ``<image>`` tag without an
  image or the reverse, a sample over the maximum length, ...) is skipped and counted per
  source and reason, the first few logged with their file and id: code raises
  :class:`SkipSample`, the pipeline turns it into a :class:`BadSample` marker, and
  :class:`BadSampleStats` counts it in the main process (docs/evaluation.md, "Data").
* A *broken input* (a malformed JSON line, an unreadable file) is a :class:`DataError` that
  stops the run, naming the file and line.

Over ``max_bad_fraction`` bad samples in a source stops the run with
:class:`BadSampleFractionError`, naming the commonest reason (for ``too_long``, the tokens the
longest needs and the key to raise, ``seq_len``).
"""

from __future__ import annotations

import dataclasses
import logging

logger = logging.getLogger("mir_jax.data")

# Reasons a sample is skipped (the keys of the per-source counters).
MISSING_IMAGE = "missing_image"
CORRUPT_IMAGE = "corrupt_image"
EMPTY_CONVERSATION = "empty_conversation"
IMAGE_TAG_WITHOUT_IMAGE = "image_tag_without_image"
IMAGE_WITHOUT_TAG = "image_without_tag"
TOO_LONG = "too_long"
TOO_MANY_IMAGES = "too_many_images"
EMPTY_TEXT = "empty_text"
BAD_RECORD = "bad_record"
UNREADABLE_TEXT = "unreadable_text"


class DataError(Exception):
    """Input that cannot be skipped sample by sample (e.g. a malformed JSON line)."""


class BadSampleFractionError(DataError):
    """Too large a fraction of one source's samples failed."""


class SkipSample(Exception):  # noqa: N818 -- a control-flow signal, not an error report
    """Raised while processing one sample to skip it, with a reason from this module."""

    def __init__(self, reason: str, detail: str = "", *, length: int = 0, limit: int = 0):
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.length, self.limit = length, limit  # too_long: tokens needed, tokens allowed


@dataclasses.dataclass(frozen=True)
class BadSample:
    """Marker element standing in for a skipped sample inside the grain pipeline."""

    source: int
    reason: str
    file: str = ""
    id: str = ""
    detail: str = ""
    length: int = 0  # too_long: the tokens the sample needs ...
    limit: int = 0  # ... and the seq_len it had


class BadSampleStats:
    """Per-source counts of seen and skipped samples, by reason.

    Args:
      source_names: one name per source index.
      max_bad_fraction: per source (a float for all, or one per source); more
        than this fraction of bad samples stops the run.
      min_seen: the fraction is only judged once a source has produced this many
        samples, so that one early bad sample does not read as 100%.
      log_first: how many bad samples to log per source.
    """

    def __init__(self, source_names, max_bad_fraction=0.1, min_seen: int = 50, log_first: int = 5):
        self.names = list(source_names)
        n = len(self.names)
        if isinstance(max_bad_fraction, (int, float)):
            max_bad_fraction = [float(max_bad_fraction)] * n
        self.max_bad_fraction = [float(f) for f in max_bad_fraction]
        self.min_seen = int(min_seen)
        self.log_first = int(log_first)
        self.seen = [0] * n
        self.bad: list[dict[str, int]] = [{} for _ in range(n)]
        self.too_long = [(0, 0)] * n  # (longest length a too_long sample needed, its seq_len)

    # -- counting ---------------------------------------------------------
    def count_good(self, source: int) -> None:
        self.seen[source] += 1

    def count_bad(self, marker: BadSample) -> None:
        s = marker.source
        self.seen[s] += 1
        reasons = self.bad[s]
        reasons[marker.reason] = reasons.get(marker.reason, 0) + 1
        if marker.reason == TOO_LONG and marker.length > self.too_long[s][0]:
            self.too_long[s] = (marker.length, marker.limit)
        if sum(reasons.values()) <= self.log_first:
            logger.warning(
                "skipping sample from source %r (file %s, id %s): %s%s",
                self.names[s], marker.file or "?", marker.id or "?", marker.reason,
                f" ({marker.detail})" if marker.detail else "",
            )
        self.check(s)

    def num_bad(self, source: int) -> int:
        return sum(self.bad[source].values())

    def check(self, source: int, final: bool = False) -> None:
        """Raise BadSampleFractionError if the source is over its bad fraction."""
        seen, bad = self.seen[source], self.num_bad(source)
        if seen == 0 or (seen < self.min_seen and not final):
            return
        if bad / seen > self.max_bad_fraction[source]:
            reason, count = max(self.bad[source].items(), key=lambda kv: kv[1])
            hint = ""
            length, limit = self.too_long[source]
            if reason == TOO_LONG and length:
                hint = (f"; the longest of them needs {length} tokens but seq_len is {limit}: raise "
                        f"it (train.py: --config.seq_len={length}) or set the source's overlong='truncate'")
            raise BadSampleFractionError(
                f"data source {self.names[source]!r}: {bad} of {seen} samples failed "
                f"(more than the allowed {self.max_bad_fraction[source]:.1%}); "
                f"commonest reason: {reason} ({count} samples){hint}"
            )

    def check_all(self, final: bool = False) -> None:
        for s in range(len(self.names)):
            self.check(s, final=final)

    # -- reporting and checkpointing -------------------------------------
    def summary(self) -> dict[str, dict]:
        """{source name: {"seen": n, "bad": n, "reasons": {reason: n}}}."""
        return {
            name: {"seen": self.seen[i], "bad": self.num_bad(i), "reasons": dict(self.bad[i])}
            for i, name in enumerate(self.names)
        }

    def get_state(self) -> dict:
        return {"seen": list(self.seen), "bad": [dict(b) for b in self.bad],
                "too_long": [list(t) for t in self.too_long]}

    def set_state(self, state: dict) -> None:
        self.seen = [int(x) for x in state["seen"]]
        self.bad = [{str(k): int(v) for k, v in b.items()} for b in state["bad"]]
        # Absent in states written before it was tracked.
        self.too_long = [tuple(int(x) for x in t) for t in state.get("too_long", [(0, 0)] * len(self.seen))]
