"""Mixture proportions, determinism, exact resume, packing, sharding, data_scale, workers."""

import json

import numpy as np
import pytest

from mir_jax.data import BATCH_KEYS, ByteTokenizer, make_eval_iterator, make_train_iterator

BOS, EOS, IMG, OFF = 1, 2, 3, 4  # ByteTokenizer ids; byte b is b + 4


def small(**kw):
    args = dict(tokenizer=ByteTokenizer(), image_size=8, num_image_tokens=2, batch_size=50,
                seq_len=512, seed=0)
    args.update(kw)
    return args


def take(it, n):
    return [next(it) for _ in range(n)]


def assert_same(batches_a, batches_b):
    assert len(batches_a) == len(batches_b)
    for a, b in zip(batches_a, batches_b):
        for k in BATCH_KEYS:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def row_kind(ids):
    """Which synthetic source a row came from, read from its first tokens."""
    if ids[1] == IMG:
        return "caption"
    if IMG in ids:
        return "interleaved"
    return "text"


def test_batch_shapes_and_dtypes():
    b = next(make_train_iterator(None, **small(batch_size=4)))
    assert set(b) == set(BATCH_KEYS)
    for k in ("input_ids", "labels", "attention_mask", "segment_ids", "positions"):
        assert b[k].shape == (4, 512) and b[k].dtype == np.int32, k
    # Default mixture has interleaved docs, so max_images = min(4, 512 // (2 + 2)) = 4.
    assert b["pixel_values"].shape == (4, 4, 8, 8, 3) and b["pixel_values"].dtype == np.float32
    assert b["image_mask"].shape == (4, 4) and b["image_mask"].dtype == bool
    # Without packing: segment_ids == attention_mask, positions 0..n-1 then 0.
    np.testing.assert_array_equal(b["segment_ids"], b["attention_mask"])
    for r in range(4):
        n = int(b["attention_mask"][r].sum())
        assert b["positions"][r].tolist() == list(range(n)) + [0] * (512 - n)
        # Image tokens of a row = 2 per real image slot; slots filled first.
        n_img = int(b["image_mask"][r].sum())
        assert int((b["input_ids"][r] == IMG).sum()) == 2 * n_img
        assert b["image_mask"][r].tolist() == [True] * n_img + [False] * (4 - n_img)
        assert np.all(b["pixel_values"][r, n_img:] == 0)


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_mm1_mixture_proportions_over_5000_samples():
    it = make_train_iterator(None, **small())
    counts = {"caption": 0, "interleaved": 0, "text": 0}
    for b in take(it, 100):
        for ids in b["input_ids"]:
            counts[row_kind(ids.tolist())] += 1
    total = sum(counts.values())
    assert total == 5000
    for kind, w in {"caption": 0.45, "interleaved": 0.45, "text": 0.10}.items():
        assert abs(counts[kind] / total - w) < 0.02, counts
    # Per-source accounting agrees and nothing was skipped.
    report = it.bad_samples
    assert all(v["bad"] == 0 for v in report.values())


def test_same_seed_same_stream_other_seed_differs():
    a = take(make_train_iterator(None, **small(batch_size=4)), 3)
    b = take(make_train_iterator(None, **small(batch_size=4)), 3)
    c = take(make_train_iterator(None, **small(batch_size=4, seed=1)), 3)
    assert_same(a, b)
    assert not np.array_equal(a[0]["input_ids"], c[0]["input_ids"])


@pytest.mark.parametrize("pack", [False, True])
def test_resume_from_saved_state_gives_the_next_batches(pack):
    cfg = {"pack": pack}
    args = small(batch_size=4, seq_len=256)
    it = make_train_iterator(cfg, **args)
    take(it, 3)
    state = json.loads(json.dumps(it.get_state()))  # must survive a JSON checkpoint
    expected = take(it, 3)
    fresh = make_train_iterator(cfg, **args)
    fresh.set_state(state)
    assert_same(take(fresh, 3), expected)


def write_docs(tmp_path, texts, name="docs.jsonl"):
    path = tmp_path / name
    path.write_text("".join(json.dumps({"id": f"d{i}", "text": t}) + "\n" for i, t in enumerate(texts)))
    return str(path)


def decode_rows(batch):
    tok = ByteTokenizer()
    out = []
    for ids, seg in zip(batch["input_ids"], batch["segment_ids"]):
        for s in range(1, int(seg.max()) + 1):
            out.append(tok.decode(ids[seg == s]))
    return out


def test_packing_layout_hand_computed(tmp_path):
    path = write_docs(tmp_path, ["a", "bb", "ccc", "dddd", "e"])
    it = make_eval_iterator({"sources": [{"type": "text", "path": path}], "pack": True,
                             "num_threads": 0}, tokenizer=ByteTokenizer(), image_size=8,
                            num_image_tokens=2, batch_size=2, seq_len=8, num_samples=None)
    b1, b2 = list(it)
    a, bb, c3, d4, e = (ord(x) + OFF for x in "abcde")
    # Row 0: [bos a eos][bos b b eos] (3 + 4 = 7 <= 8); "ccc" (5) does not fit.
    assert b1["input_ids"][0].tolist() == [BOS, a, EOS, BOS, bb, bb, EOS, 0]
    assert b1["labels"][0].tolist() == [-100, a, EOS, -100, bb, bb, EOS, -100]
    assert b1["segment_ids"][0].tolist() == [1, 1, 1, 2, 2, 2, 2, 0]
    assert b1["positions"][0].tolist() == [0, 1, 2, 0, 1, 2, 3, 0]
    assert b1["attention_mask"][0].tolist() == [1] * 7 + [0]
    # Row 1: "ccc" (5) then "dddd" (6) does not fit: alone.
    assert b1["input_ids"][1].tolist() == [BOS, c3, c3, c3, EOS, 0, 0, 0]
    assert b1["segment_ids"][1].tolist() == [1] * 5 + [0] * 3
    # Last batch: [dddd], [e]?  "dddd" (6) + "e" (3) = 9 > 8 -> two rows.
    assert b2["input_ids"][0].tolist() == [BOS, d4, d4, d4, d4, EOS, 0, 0]
    assert b2["input_ids"][1].tolist() == [BOS, e, EOS, 0, 0, 0, 0, 0]


def test_eval_last_batch_padded_with_empty_rows(tmp_path):
    path = write_docs(tmp_path, ["a", "b", "c"])
    batches = list(make_eval_iterator({"sources": [{"type": "text", "path": path}],
                                       "num_threads": 0}, **small(batch_size=2, seq_len=8),
                                      num_samples=None))
    assert len(batches) == 2
    assert batches[1]["attention_mask"].sum(1).tolist() == [3, 0]
    assert np.all(batches[1]["labels"][1] == -100) and np.all(batches[1]["input_ids"][1] == 0)


def texts_seen(batches):
    return [t for b in batches for t in decode_rows(b)]


def test_sharding_gives_disjoint_slices(tmp_path):
    docs = [f"doc{i}" for i in range(6)]
    cfg = {"sources": [{"type": "text", "path": write_docs(tmp_path, docs)}], "num_threads": 0}
    shards = [texts_seen(make_eval_iterator(cfg, **small(batch_size=3, seq_len=16),
                                            shard_index=i, shard_count=2, num_samples=None))
              for i in range(2)]
    assert shards == [["doc0", "doc2", "doc4"], ["doc1", "doc3", "doc5"]]
    train = [set(texts_seen(take(make_train_iterator(cfg, **small(batch_size=6, seq_len=16),
                                                     shard_index=i, shard_count=2), 2)))
             for i in range(2)]
    assert train == [{"doc0", "doc2", "doc4"}, {"doc1", "doc3", "doc5"}]


def test_data_scale_uses_first_n_and_reshuffles_each_epoch(tmp_path):
    docs = [f"doc{i}" for i in range(10)]
    cfg = {"sources": [{"type": "text", "path": write_docs(tmp_path, docs), "data_scale": 4}],
           "num_threads": 0}
    seen = texts_seen(take(make_train_iterator(cfg, **small(batch_size=4, seq_len=16)), 3))
    epochs = [seen[0:4], seen[4:8], seen[8:12]]
    for ep in epochs:  # every epoch is a permutation of the first 4 documents
        assert sorted(ep) == ["doc0", "doc1", "doc2", "doc3"]
    assert len({tuple(ep) for ep in epochs}) > 1  # and the order changes between epochs


def test_weights_mix_two_file_sources(tmp_path):
    a = write_docs(tmp_path, [f"a{i}" for i in range(50)], "a.jsonl")
    b = write_docs(tmp_path, [f"b{i}" for i in range(50)], "b.jsonl")
    cfg = {"sources": [{"type": "text", "path": a, "weight": 3},
                       {"type": "text", "path": b, "weight": 1}], "num_threads": 0}
    seen = texts_seen(take(make_train_iterator(cfg, **small(batch_size=40, seq_len=16)), 10))
    share_a = sum(t.startswith("a") for t in seen) / len(seen)
    assert abs(share_a - 0.75) < 0.02


@pytest.mark.slow
def test_two_workers_match_in_process_and_resume():
    cfg = {"num_workers": 2, "num_threads": 1}
    args = small(batch_size=4, seq_len=256)
    ref = take(make_train_iterator({"num_threads": 1}, **args), 4)
    it = make_train_iterator(cfg, **args)
    got = take(it, 2)
    state = it.get_state()
    got += take(it, 2)
    assert_same(got, ref)
    # grain's multiprocess state is per worker: resume with the same worker count.
    fresh = make_train_iterator(cfg, **args)
    fresh.set_state(state)
    assert_same(take(fresh, 2), ref[2:])


def test_images_fill_slots_in_token_order_and_pack_across_examples(tmp_path):
    from PIL import Image

    colours = {"r": (255, 0, 0), "g": (0, 255, 0), "b": (0, 0, 255)}
    for name, c in colours.items():
        Image.new("RGB", (4, 4), c).save(tmp_path / f"{name}.png")
    docs = [{"segments": [{"text": "x"}, {"image": "b.png"}, {"text": "y"}, {"image": "r.png"}]},
            {"segments": [{"image": "g.png"}, {"text": "z"}]}]
    path = tmp_path / "docs.jsonl"
    path.write_text("\n".join(json.dumps(d) for d in docs))
    cfg = {"sources": [{"type": "interleaved", "path": str(path), "image_folder": str(tmp_path)}],
           "pack": True, "max_images": 3, "num_threads": 0}
    (b,) = list(make_eval_iterator(cfg, tokenizer=ByteTokenizer(), image_size=4,
                                   num_image_tokens=2, batch_size=1, seq_len=32, num_samples=None,
                                   mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)))
    x, y, z = (ord(c) + OFF for c in "xyz")
    # Doc 1: [bos x img img y img img eos] (8); doc 2: [bos img img z eos] (5).
    assert b["input_ids"][0, :13].tolist() == [BOS, x, IMG, IMG, y, IMG, IMG, EOS,
                                               BOS, IMG, IMG, z, EOS]
    assert b["segment_ids"][0, :14].tolist() == [1] * 8 + [2] * 5 + [0]
    assert b["image_mask"][0].tolist() == [True, True, True]
    # Slots in token order: blue, red, green; pure colours map to +-1 with mean = std = 0.5.
    for slot, name in enumerate("brg"):
        want = np.array(colours[name], np.float32) / 255 * 2 - 1
        np.testing.assert_allclose(b["pixel_values"][0, slot, 0, 0], want, atol=1e-6)


def test_image_config_from_hf_preprocessor(tmp_path):
    from mir_jax.data import image_config_from_hf

    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"crop_size": {"height": 336, "width": 336}, "image_mean": [0.1, 0.2, 0.3],
         "image_std": [0.4, 0.5, 0.6], "size": {"shortest_edge": 336}}))
    cfg = image_config_from_hf(str(tmp_path))
    assert (cfg.size, cfg.mean, cfg.std, cfg.mode) == (336, (0.1, 0.2, 0.3), (0.4, 0.5, 0.6), "pad")
