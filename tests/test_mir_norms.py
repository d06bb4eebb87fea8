"""The per-layer mean hidden-state norms every MIR result reports beside its FD (docs/mir.md,
section 4), against NumPy float64 `np.linalg.norm(h, axis=-1).mean()` on the valid rows as
given: compute_mir (plain and jackknife), the streaming accumulator, hidden-states files (both
modes), the training loop's eval row, and evaluate.py's mir.json and plot.
"""

import json
import os

import numpy as np
import pytest

from mir_jax import mir

L, D = 3, 8


def _layers(seed=0, n=60, m=50):
    """Vision [L, n, D] and text [L, m, D] rows of different scales per layer, a massive row
    that the outlier rule replaces, and masks with padding rows full of large values."""
    rng = np.random.default_rng(seed)
    scales = np.array([1.0, 10.0, 300.0])[:, None, None]
    vision = (rng.standard_normal((L, n, D)) * scales + 0.5).astype(np.float32)
    text = (rng.standard_normal((L, m, D)) * scales[::-1] * 0.1).astype(np.float32)
    vision[:, 3] *= 100.0  # an outlier: replaced by the rule, but part of the raw norms
    vision_mask, text_mask = np.ones(n, bool), np.ones(m, bool)
    vision_mask[-5:], text_mask[-4:] = False, False
    vision[:, -5:], text[:, -4:] = 1e6, 1e6  # padding: must not enter any mean
    return vision, text, vision_mask, text_mask


def _reference(rows, mask):
    """[L] float64 mean L2 norm of the valid rows of each layer."""
    return np.array([np.linalg.norm(np.asarray(layer, np.float64)[mask], axis=-1).mean() for layer in rows])


def _check(result, vision, text, vision_mask, text_mask):
    np.testing.assert_allclose(result.vision_norm_per_layer, _reference(vision, vision_mask), rtol=1e-6)
    np.testing.assert_allclose(result.text_norm_per_layer, _reference(text, text_mask), rtol=1e-6)
    assert np.shape(result.vision_norm_per_layer) == np.shape(result.text_norm_per_layer) == (L,)


@pytest.mark.parametrize("normalize,remove_outliers", [(True, True), (False, False)])
def test_compute_mir_reports_the_raw_mean_norms(normalize, remove_outliers):
    vision, text, vm, tm = _layers()
    result = mir.compute_mir(vision, text, vision_mask=vm, text_mask=tm, method="eigh",
                             normalize=normalize, remove_outliers=remove_outliers)
    _check(result, vision, text, vm, tm)


def test_jackknife_reports_the_same_norms():
    vision, text, vm, tm = _layers()
    groups_v, groups_t = np.arange(vision.shape[1]) % 4, np.arange(text.shape[1]) % 4
    result = mir.compute_mir(vision, text, vision_mask=vm, text_mask=tm, method="eigh",
                             uncertainty="jackknife", vision_groups=groups_v, text_groups=groups_t)
    _check(result, vision, text, vm, tm)


@pytest.mark.parametrize("remove_outliers,devices", [(True, 1), (False, 1), (True, 8)])
def test_streaming_reports_the_raw_mean_norms_once_over_all_batches(remove_outliers, devices):
    """Three uneven batches, two passes with the outlier rule: every row counted once; on 8
    devices the batches are padded to a multiple of 8 rows and the sums combined by psum."""
    from mir_jax.sharding import make_mesh

    vision, text, vm, tm = _layers()
    cuts = [(0, 17), (17, 40), (40, 60)]
    acc = mir.MIRAccumulator(method="eigh", remove_outliers=remove_outliers,
                             mesh=make_mesh((devices, 1, 1)) if devices > 1 else None)
    result = acc.run(lambda: [(vision[:, a:b], text[:, a:min(b, 50)], vm[a:b], tm[a:min(b, 50)])
                              for a, b in cuts])
    assert acc.num_passes == (2 if remove_outliers else 1)
    _check(result, vision, text, vm, tm)


def _hidden_states_file(path, rng, *, samples, positions, vision_span, scales, name):
    """Writes `samples` dumps of random hidden states [L+1, positions, D] (layer l scaled by
    scales[l]) with vision at positions [vision_span) and text after it, sample i under
    name.format(i); returns the vision [L, N, D] and text [L, M, D] rows of layers 1..L."""
    from safetensors.numpy import save_file

    tensors, vision_rows, text_rows = {}, [], []
    at = np.arange(positions)
    vision_mask = (at >= vision_span[0]) & (at < vision_span[1])
    text_mask = at >= vision_span[1]
    for i in range(samples):
        states = (rng.standard_normal((L + 1, positions, D)) * np.array(scales)[:, None, None]
                  ).astype(np.float32)
        key = name.format(i)
        tensors[f"{key}/hidden_states"] = states
        tensors[f"{key}/vision_mask"], tensors[f"{key}/text_mask"] = vision_mask, text_mask
        vision_rows.append(states[1:, vision_mask])
        text_rows.append(states[1:, text_mask])
    save_file(tensors, path)
    return np.concatenate(vision_rows, axis=1), np.concatenate(text_rows, axis=1)


def test_hidden_states_files_report_the_norms_in_both_modes(tmp_path):
    from mir_jax.mir.hidden_states import hidden_states_mir

    path = str(tmp_path / "h.safetensors")
    # 2 prompt positions, 9 vision, 12 text; layers scaled apart
    vision, text = _hidden_states_file(path, np.random.default_rng(1), samples=4, positions=23,
                                       vision_span=(2, 11), scales=(1, 2, 20, 200), name="{:04d}")
    all_v, all_t = np.ones(vision.shape[1], bool), np.ones(text.shape[1], bool)
    for mode in ("exact", "streaming"):
        _check(hidden_states_mir(path, mode=mode).result, vision, text, all_v, all_t)
    with_interval = hidden_states_mir(path, mode="exact", uncertainty="jackknife", num_groups=2)
    _check(with_interval.result, vision, text, all_v, all_t)


def test_evaluation_json_table_and_plot_carry_the_norms(tmp_path):
    from mir_jax.evals.mir import MIREvaluation, norm_fields, plot_per_layer

    vision, text, vm, tm = _layers()
    result = mir.compute_mir(vision, text, vision_mask=vm, text_mask=tm, method="eigh")
    evaluation = MIREvaluation(per_layer=np.asarray(result.per_layer), overall=float(result.overall),
                               method="eigh", mode="exact", num_samples=4, num_vision_tokens=55,
                               num_text_tokens=46, lm_loss=1.0, perplexity=2.7, timings={},
                               **norm_fields(result))
    record = json.loads(json.dumps(evaluation.to_json()))  # as mir.json holds it
    np.testing.assert_allclose(record["vision_norm_per_layer"], _reference(vision, vm), rtol=1e-6)
    np.testing.assert_allclose(record["text_norm_per_layer"], _reference(text, tm), rtol=1e-6)
    table = evaluation.format()
    assert "|h| vision" in table and f"{_reference(vision, vm)[2]:.4g}" in table
    ticks = plot_per_layer({"m": evaluation}, str(tmp_path / "p.png"))
    assert ticks and all(t == int(t) for t in ticks)
    assert os.path.getsize(tmp_path / "p.png") > 1000


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_the_training_loop_eval_row_carries_the_norms(tmp_path):
    """Evaluations.held_out (the row the loop writes to metrics.jsonl) against float64 norms of the
    model's own hidden states at hand-picked positions: the image tokens, and every real
    position after the row's last image token."""
    from flax import nnx

    from mir_jax.models.forward import forward
    from mir_jax.train.evaluations import Evaluations
    from mir_jax.train.loop import Setup
    from tests import train_fixtures

    config = train_fixtures.tiny_train_config()
    # One row per data-parallel shard of the 8 test devices; the synthetic stories are fed whole.
    config.evals = {"mir": {"num_samples": 8, "batch_size": 8, "seq_len": 512}}
    setup = Setup(config, str(tmp_path))
    try:
        _, state, frozen = setup.initial_state()
        evaluations = Evaluations(setup, state, frozen)
        row = evaluations.held_out(0, state, frozen)
        mir_batches = setup.evals[0].evaluator.fixed  # the fixed set the row was computed on
        model = setup.stepper.model(state, frozen)
        image_token = int(setup.model_config.image_token_id)
        vision_rows, text_rows = [[] for _ in range(2)], [[] for _ in range(2)]
        hidden = nnx.jit(lambda m, b: forward(m, b, hidden_states=True).hidden_states)
        for batch in mir_batches:
            states = np.asarray(hidden(model, batch), np.float64)[1:]  # layers 1..L
            for b, (ids, segments) in enumerate(zip(np.asarray(batch["input_ids"]),
                                                    np.asarray(batch["segment_ids"]))):
                image = np.flatnonzero((ids == image_token) & (segments != 0))
                if not len(image):
                    continue
                text = [p for p in range(image.max() + 1, len(ids)) if segments[p] != 0]
                for layer in range(states.shape[0]):
                    vision_rows[layer].append(states[layer, b, image])
                    text_rows[layer].append(states[layer, b, text])
    finally:
        setup.checkpointer.close()
    assert len(row["mir_per_layer"]) == len(vision_rows) == 2
    want_v = [np.linalg.norm(np.concatenate(r), axis=-1).mean() for r in vision_rows]
    want_t = [np.linalg.norm(np.concatenate(r), axis=-1).mean() for r in text_rows]
    assert all(isinstance(x, float) for x in row["mir_vision_norm_per_layer"] + row["mir_text_norm_per_layer"])
    np.testing.assert_allclose(row["mir_vision_norm_per_layer"], want_v, rtol=1e-5)
    np.testing.assert_allclose(row["mir_text_norm_per_layer"], want_t, rtol=1e-5)


@pytest.mark.slow
def test_evaluate_cli_writes_the_norms_to_mir_json(tmp_path):
    from tests.helpers import run_tool

    path = str(tmp_path / "h.safetensors")
    vision, text = _hidden_states_file(path, np.random.default_rng(2), samples=3, positions=20,
                                       vision_span=(1, 9), scales=(1, 3, 30, 300), name="{}")
    out_dir = tmp_path / "out"
    run = run_tool("evaluate.py", f"--hidden_states={path}", "--mode=exact", f"--output_dir={out_dir}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    record = next(iter(json.loads((out_dir / "mir.json").read_text())["results"].values()))
    np.testing.assert_allclose(record["vision_norm_per_layer"],
                               _reference(vision, np.ones(vision.shape[1], bool)), rtol=1e-6)
    np.testing.assert_allclose(record["text_norm_per_layer"],
                               _reference(text, np.ones(text.shape[1], bool)), rtol=1e-6)
    assert "|h| vision" in run.stdout and (out_dir / "mir_per_layer.png").stat().st_size > 1000
