"""In-context examples for few-shot evaluation (MM1's 0/4/8-shot captioning and VQA).

Examples are drawn deterministically per query from a support set and never include the
query (same `question_id` or image); docs/evaluation.md.
"""

from __future__ import annotations

import zlib

import numpy as np


def _same_image(a, b) -> bool:
    return isinstance(a, str) and isinstance(b, str) and a == b


def select_examples(support: list[dict], query: dict, k: int, seed: int = 0) -> list[dict]:
    """`k` distinct records of `support` for `query` (deterministic; never the query itself)."""
    if k <= 0:
        return []
    allowed = [i for i, r in enumerate(support)
               if r["question_id"] != query["question_id"] and not _same_image(r.get("image"), query.get("image"))]
    if len(allowed) < k:
        raise ValueError(f"{k}-shot needs {k} support examples besides the query; the support set "
                         f"has {len(allowed)}")
    rng = np.random.default_rng([seed, zlib.crc32(str(query["question_id"]).encode())])
    return [support[allowed[int(i)]] for i in rng.choice(len(allowed), size=k, replace=False)]
