"""`mir_jax.evals.loading`: the one loader of a model and its preprocessing (parameters only,
no optimizer), for WORKDIR, WORKDIR@STEP and HF directories, and the one reader of
preprocessor_config.json. References are independent of the loader: orbax's raw read of the
checkpoint files, the torch model's own tensors, transformers' image processor's output."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mir_jax.data import image_config_from_hf
from mir_jax.data.images import ImageConfig, load_and_preprocess, normalize
from mir_jax.evals.loading import load_model
from mir_jax.train.loop import train_and_evaluate
from mir_jax.weights import WeightsSource, load_weights
from mir_jax.weights.checkpoint import CheckpointError
from tests import train_fixtures as fx
from tests.helpers import model_params, run_tool, saved_params

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _assert_bitwise_equal(got: dict, want: dict) -> None:
    assert got.keys() == want.keys()
    for k in want:
        assert got[k].dtype == want[k].dtype, k
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)


@pytest.fixture(scope="module")
def everything(tmp_path_factory):
    """Everything trains (the checkpoint has no frozen item), one checkpoint at step 2."""
    workdir = str(tmp_path_factory.mktemp("all") / "run")
    c = fx.tiny_train_config(total_steps=2)
    c.checkpoint.every = 2
    c.trainable.vision, c.trainable.llm = "all", "all"
    train_and_evaluate(c, workdir)
    return workdir


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_workdir_params_are_the_saved_ones_and_no_optimizer_is_built(stage1, everything, monkeypatch):
    from mir_jax.train import step as step_lib

    def no_optimizer(*args, **kwargs):
        raise AssertionError("the loader built an optimizer")

    monkeypatch.setattr(step_lib, "make_optimizer", no_optimizer)
    monkeypatch.setattr(step_lib.Stepper, "__init__", no_optimizer)
    assert not os.path.isdir(os.path.join(everything, "checkpoints", "2", "frozen"))
    for workdir, step in ((stage1, 4), (everything, 2)):
        pre = load_model(workdir)
        config, model = pre.model.config, pre.model
        _assert_bitwise_equal(model_params(model), saved_params(workdir, step))
        assert config.text.num_layers == 2 and model.config == config
        assert pre.image == ImageConfig(size=32, mean=pre.image.mean, std=pre.image.std, mode="pad")
        assert pre.tokenizer.vocab_size == 264


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_export_writes_the_checkpoint_as_an_hf_directory_that_says_where_it_came_from(everything, tmp_path):
    """`python -m mir_jax.weights.export WORKDIR OUT`: HF transformers' own safetensors reader
    finds the orbax-saved arrays under LlavaForConditionalGeneration's keys, and export.json names
    the step and the run's config; a bad path is one line and exit status 1."""
    from safetensors.numpy import load_file

    out = tmp_path / "hf"
    proc = subprocess.run([sys.executable, "-m", "mir_jax.weights.export", everything, str(out)],
                          capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=""))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"wrote {out} from {everything} (step 2)"
    tensors = load_file(str(out / "model.safetensors"))
    saved = saved_params(everything, 2)
    # The embedding table is the one tensor stored the same way in both layouts.
    np.testing.assert_array_equal(tensors["language_model.model.embed_tokens.weight"],
                                  saved["language_model/embed_tokens"])
    info = json.load(open(out / "export.json"))
    assert info["source"]["step"] == 2 and info["train_config"]["total_steps"] == 2
    assert not any(f.startswith("tokenizer") for f in os.listdir(out))  # a byte-tokenizer run has none
    bad = subprocess.run([sys.executable, "-m", "mir_jax.weights.export", str(tmp_path / "nope"), str(out)],
                         capture_output=True, text=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "does not exist" in bad.stderr


def test_workdir_at_step_takes_that_step(stage1):
    latest, at2 = saved_params(stage1, 4), saved_params(stage1, 2)
    assert any(not np.array_equal(latest[k], at2[k]) for k in latest)  # training moved the connector
    model = load_model(f"{stage1}@2").model
    _assert_bitwise_equal(model_params(model), at2)
    weights = load_weights(stage1, step=2)  # the same step as an argument
    _assert_bitwise_equal(model_params(weights.model), at2)
    assert weights.source == WeightsSource("workdir", stage1, 2, ())
    handle = load_model(f"{stage1}@2")
    assert handle.name == "run@2" and handle.path == f"{stage1}@2"
    _assert_bitwise_equal(model_params(handle.model), at2)


def test_missing_step_is_one_line_listing_the_steps(stage1):
    with pytest.raises(CheckpointError) as e:
        load_model(f"{stage1}@3")
    msg = str(e.value)
    assert "\n" not in msg and "no checkpoint at step 3" in msg and msg.endswith("its steps: 2, 4"), msg
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_model(f"{stage1}_nope@2")


@pytest.mark.slow
def test_cli_checkpoint_at_step(stage1):
    bad = run_tool("evaluate.py", f"--checkpoint={stage1}@3", "--noprogress")
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines()[-1] == (
        f"evaluate.py: error: {stage1} has no checkpoint at step 3; its steps: 2, 4")
    good = run_tool("evaluate.py", f"--checkpoint={stage1}@2", "--num_samples=2", "--batch_size=2", "--seq_len=512",
                "--method=legacy_fast", "--mode=exact", "--noprogress")
    assert good.returncode == 0, good.stderr[-3000:]
    record = json.loads(open(os.path.join(stage1, "mir_eval_step2", "mir.json")).read())
    assert [r["model"] for r in record["results"].values()] == [f"{stage1}@2"]
    assert not os.path.exists(os.path.join(stage1, "mir_eval"))  # the newest step's place is left alone


# ---------------------------------------------------------------------------------------------
# Hugging Face directories
# ---------------------------------------------------------------------------------------------
IMAGE_SIZE, PATCH, SHORTEST = 28, 7, 32


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory):
    """A random HF LLaVA (CLIP + Llama) with a CLIP processor that resizes to 32 and crops 28."""
    pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    from mir_jax.data import ByteTokenizer
    from tests.torch_init import save_random_llava

    tok = ByteTokenizer()
    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=IMAGE_SIZE, patch_size=PATCH)
    text = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=2, vocab_size=tok.vocab_size,
                                    pad_token_id=tok.pad_id, eos_token_id=tok.eos_id, bos_token_id=tok.bos_id)
    path = str(tmp_path_factory.mktemp("tiny_hf"))
    model = save_random_llava(transformers.LlavaConfig(vision_config=vision, text_config=text,
                                                       image_token_id=tok.image_token_id), 0, path)
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": SHORTEST},
                                           crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE},
                                           image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    proc.save_pretrained(path)
    return path, model, proc


def test_hf_directory_loads_weights_and_its_processor(tiny_hf):
    path, torch_model, _ = tiny_hf
    pre = load_model(path)
    config, model = pre.model.config, pre.model
    assert config.vision.image_size == IMAGE_SIZE
    sd = {k: v.detach().numpy() for k, v in torch_model.state_dict().items()}
    embed = next(v for k, v in sd.items() if k.endswith("embed_tokens.weight"))
    np.testing.assert_array_equal(np.asarray(model.language_model.embed_tokens[...]), embed)
    assert pre.image == ImageConfig(size=IMAGE_SIZE, mean=(0.1, 0.2, 0.3), std=(0.4, 0.5, 0.6), mode="crop",
                                    shortest_edge=SHORTEST)
    assert pre.template == "vicuna_v1" and pre.system is None
    assert load_model(path, image_mode="pad").image.mode == "pad"  # the flag overrides the processor
    with pytest.raises(FileNotFoundError, match="workdirs only"):
        load_model(path, step=2)


def test_processor_pixels_match_transformers(tiny_hf):
    """Resize the shorter side to 32, centre-crop 28, normalize: our pixels equal the HF
    processor's on a 48 x 40 image (sizes where both round the long side alike)."""
    from PIL import Image

    path, _, proc = tiny_hf
    image = image_config_from_hf(path, mode=None)
    rgb = np.random.default_rng(0).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    ours = normalize(load_and_preprocess(Image.fromarray(rgb), image)[None], image.mean, image.std)[0]
    theirs = proc(images=Image.fromarray(rgb), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    assert ours.shape == theirs.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
    np.testing.assert_allclose(ours, theirs, atol=1e-5)


def test_processor_variants_are_read_or_refused_in_one_line(tmp_path):
    transformers = pytest.importorskip("transformers")
    siglip = transformers.SiglipImageProcessor(size={"height": 384, "width": 384})
    siglip.save_pretrained(str(tmp_path))
    cfg = image_config_from_hf(str(tmp_path), mode=None)
    assert (cfg.size, cfg.mean, cfg.std, cfg.mode, cfg.shortest_edge) == (384, (0.5,) * 3, (0.5,) * 3, "resize", None)
    file = tmp_path / "preprocessor_config.json"
    file.write_text(json.dumps({"size": {"height": 384, "width": 336}}))
    with pytest.raises(ValueError, match="not square"):
        image_config_from_hf(str(file))
    file.write_text(json.dumps({"size": 224, "rescale_factor": 1.0}))
    with pytest.raises(ValueError, match="rescale_factor 1.0"):
        image_config_from_hf(str(file))
