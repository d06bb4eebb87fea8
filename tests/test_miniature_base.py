"""The shipped miniature base (mir_jax/assets/miniature_base, made by configs/stage0.py:runlocal
and `python -m mir_jax.weights.export`): it is the `:runlocal` recipes' model, HF transformers'
PyTorch LLaVA reads the same files to the same logits, and its LLM, told each held-out scene in
words, answers the embedded benchmark at the accuracy docs/miniature_world.md documents."""

from __future__ import annotations

import json
import os

import jax.numpy as jnp
import numpy as np
import pytest

from configs import common
from mir_jax.data import miniature, synthetic
from mir_jax.evals import get_evaluator
from mir_jax.evals.loading import load_model
from mir_jax.models import ConnectorConfig, LlavaConfig
from mir_jax.weights import load_weights

# docs/miniature_world.md, "The shipped base": `evaluate.py --hf_model=mir_jax/assets/miniature_base
# --evals=vqa,pope,multiple_choice --scene=text --num_samples=96` (the same records). A few
# answers may flip on another CPU's rounding: TOLERANCE is 3 of 96.
DOCUMENTED = {"vqa": 0.875, "pope": 0.917, "multiple_choice": 0.802}
NUM_SAMPLES = 96
TOLERANCE = 3 / 96


@pytest.fixture(scope="module")
def base():
    return load_weights(miniature.BASE_DIR)


def test_the_base_is_the_runlocal_recipes_model(base):
    assert base.source.kind == "hf"
    expected = LlavaConfig.from_dict(common.miniature_model(ConnectorConfig(name="mlp2x_gelu")))
    assert base.config == expected
    info = json.load(open(os.path.join(miniature.BASE_DIR, "export.json")))
    assert info["train_config"]["data"]["system"] == miniature.SYSTEM
    assert info["source"]["kind"] == "workdir" and info["source"]["step"] > 0


@pytest.fixture(scope="module")
def model():
    return load_model(miniature.BASE_DIR)


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
@pytest.mark.parametrize("task", ["vqa", "pope", "multiple_choice"])
def test_told_in_words_it_answers_at_its_documented_accuracy(model, task):
    assert model.system == miniature.SYSTEM  # from export.json: the prompt it was trained with
    result = get_evaluator(task, num_samples=NUM_SAMPLES, scene="text", batch_size=32).run(model)
    assert abs(result.scores["accuracy"] - DOCUMENTED[task]) <= TOLERANCE


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_hf_transformers_reads_it_to_the_same_logits(base):
    torch = pytest.importorskip("torch", reason="HF's PyTorch LLaVA is the reference here")
    transformers = pytest.importorskip("transformers")
    hfm = transformers.LlavaForConditionalGeneration.from_pretrained(miniature.BASE_DIR).eval()
    tok = transformers.AutoTokenizer.from_pretrained(miniature.BASE_DIR)
    k = base.config.num_image_tokens
    text = tok(" A chat between a user and an assistant. USER:")["input_ids"]
    ids = np.array([[1, *text, *[3] * k, *tok(" What colour are the circles? ASSISTANT:")["input_ids"]]])
    scene = synthetic.random_scene(np.random.default_rng(0))
    image = synthetic.render(scene, 32, np.random.default_rng(1)).astype(np.float32) / 255.0
    pixels = (image - np.array(common.CLIP_MEAN)) / np.array(common.CLIP_STD)
    with torch.no_grad():
        theirs = hfm(input_ids=torch.tensor(ids), attention_mask=torch.ones_like(torch.tensor(ids)),
                     pixel_values=torch.tensor(pixels[None], dtype=torch.float32).permute(0, 3, 1, 2)).logits.numpy()
    ours = base.model(jnp.asarray(ids), jnp.asarray(pixels[None, None], jnp.float32), jnp.ones((1, 1), bool),
                      jnp.ones(ids.shape, jnp.int32)).logits
    assert np.abs(theirs).max() > 1.0
    np.testing.assert_allclose(np.asarray(ours), theirs, atol=1e-4, rtol=0)
