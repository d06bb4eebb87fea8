"""The connector-scale experiment (mir_jax.studies.connector_scale) against HF PyTorch: the
same tiny HF LLaVA with its projector's last layer multiplied by the factor (weight and bias,
so its output is exactly factor times), hidden states taken from PyTorch and MIR computed by
the float64 transcription of docs/mir.md (tests/reference_mir.py)."""

import copy
import json
import os

import numpy as np
import pytest

from tests import reference_mir as ref

pytest.importorskip("transformers")
torch = pytest.importorskip("torch", reason="the HF PyTorch model is the reference here")

from mir_jax.evals import get_evaluator  # noqa: E402
from mir_jax.evals.loading import load_model  # noqa: E402
from mir_jax.studies import connector_scale  # noqa: E402
from tests.helpers import run_tool  # noqa: E402
from tests.test_evaluate import IMAGE_SIZE, PATCH, TOKENIZER, _hf_rows  # noqa: E402
from tests.torch_init import save_random_llava, tiny_llava_config  # noqa: E402


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("tiny_llava_scale"))
    return path, save_random_llava(tiny_llava_config(TOKENIZER, IMAGE_SIZE, PATCH), 0, path)


def _scaled_hf(hf_model, factor):
    scaled = copy.deepcopy(hf_model)
    last = scaled.model.multi_modal_projector.linear_2 if hasattr(scaled, "model") and hasattr(
        scaled.model, "multi_modal_projector") else scaled.multi_modal_projector.linear_2
    with torch.no_grad():
        last.weight.mul_(factor)
        last.bias.mul_(factor)
    return scaled


@pytest.mark.slow
def test_each_factor_equals_the_hf_model_with_its_projector_scaled(tiny_llava):
    path, hf_model = tiny_llava
    model = load_model(path)
    original = model.model.connector
    evaluator = get_evaluator("mir", num_samples=8, mode="exact")
    evaluator.prepare(model)  # the same image/text pairs the experiment feeds, as HF's input
    batches = evaluator.fixed
    records = connector_scale.measure(model, [0.5, 2.0], num_samples=8, loss_samples=16)
    assert model.model.connector is original  # restored
    for record in records:
        vision, text, _, _ = _hf_rows(_scaled_hf(hf_model, record["scale"]), batches)
        expected_layers, expected_overall = ref.mir(vision, text)
        np.testing.assert_allclose(record["mir_per_layer"], expected_layers, rtol=1e-3)
        assert abs(record["mir"] / expected_overall - 1) < 1e-3
        np.testing.assert_allclose(record["vision_norm_per_layer"],
                                   [np.linalg.norm(v, axis=1).mean() for v in vision], rtol=1e-4)
        np.testing.assert_allclose(record["text_norm_per_layer"],
                                   [np.linalg.norm(t, axis=1).mean() for t in text], rtol=1e-4)
    # The factor changes what the model computes, so the two losses differ.
    assert records[0]["loss"] != records[1]["loss"]


@pytest.mark.slow
def test_cli_writes_json_and_plot_and_refuses_bad_factors(tiny_llava, tmp_path):
    path, _ = tiny_llava
    out = str(tmp_path / "out")
    run = run_tool("-m", "mir_jax.studies.connector_scale", path, "--scales=1,3", "--num_samples=8",
                   "--loss_samples=8", f"--output_dir={out}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    result = json.load(open(os.path.join(out, connector_scale.RESULT_FILE)))
    assert [r["scale"] for r in result["records"]] == [1.0, 3.0]
    assert result["weights"]["path"] and "jax" in result["versions"]
    assert os.path.exists(os.path.join(out, connector_scale.PLOT_FILE))
    bad = run_tool("-m", "mir_jax.studies.connector_scale", path, "--scales=1,-2", f"--output_dir={out}")
    assert bad.returncode == 2 and "--scales" in bad.stderr
    missing = run_tool("-m", "mir_jax.studies.connector_scale", str(tmp_path / "nothing"), f"--output_dir={out}")
    assert missing.returncode == 2 and len(missing.stderr.strip().splitlines()) == 1, missing.stderr
