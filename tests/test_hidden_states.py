"""MIR from dumped hidden states (mir_jax.mir.hidden_states, docs/mir.md section 10).

References: the float64 transcription of docs/mir.md (tests/reference_mir.py) on the rows the
files hold, a float64 delete-a-group jackknife written here, and, for the dump tool, our own
forward of the same tiny HF LLaVA the parity tests use (evaluate_mir); for the dump tool's
command line (AutoProcessor on image and text files), our own run of the same HF processor and
model on the shipped miniature base, with the masks selected here from the input ids."""

from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest
from safetensors.numpy import save_file

from mir_jax.mir import compute_mir
from mir_jax.mir.hidden_states import HiddenStatesError, hidden_states_mir, open_hidden_states
from tests import reference_mir as ref
from tests.helpers import ROOT

L, D = 3, 12


def _samples(rng, count, shift=0.6, vision=9):
    """count samples of random hidden states [L+1, S, D] (vision block after 2 prompt
    positions, then text, then one padding position) with their masks and selected rows."""
    out = []
    for _ in range(count):
        length = int(rng.integers(2 + vision + 12, 2 + vision + 24))
        states = rng.standard_normal((L + 1, length, D)).astype(np.float32)
        states[:, 2:2 + vision] = states[:, 2:2 + vision] * 1.5 + shift
        vision_mask = np.zeros(length, bool)
        vision_mask[2:2 + vision] = True
        text_mask = np.zeros(length, bool)
        text_mask[2 + vision:length - 1] = True
        out.append((states, vision_mask, text_mask))
    return out


def _write(path, samples, start=0, metadata=None, names=None):
    tensors = {}
    for i, (states, vision, text) in enumerate(samples):
        name = names[i] if names else f"{start + i:06d}"
        tensors.update({f"{name}/hidden_states": states, f"{name}/vision_mask": vision,
                        f"{name}/text_mask": text})
    save_file(tensors, str(path), metadata=metadata)
    return str(path)


def _reference(samples, first_layer=1, **kw):
    """float64 MIR of the samples' selected rows (layers first_layer.. of each array)."""
    vision = [np.concatenate([s[first_layer + k][v] for s, v, _ in samples]) for k in range(L)]
    text = [np.concatenate([s[first_layer + k][t] for s, _, t in samples]) for k in range(L)]
    return ref.mir(vision, text, **kw)


@pytest.fixture(scope="module")
def sharded(tmp_path_factory):
    """12 samples in three shards of 4, and the same samples in one file."""
    rng = np.random.default_rng(0)
    samples = _samples(rng, 12)
    directory = tmp_path_factory.mktemp("shards")
    for shard in range(3):
        _write(directory / f"part-{shard}.safetensors", samples[4 * shard:4 * shard + 4], 4 * shard)
    single = _write(tmp_path_factory.mktemp("single") / "all.safetensors", samples)
    return str(directory), single, samples


def test_exact_mode_equals_the_float64_reference_on_shards_and_one_file(sharded):
    directory, single, samples = sharded
    expected, expected_overall = _reference(samples)
    for path in (directory, single):
        out = hidden_states_mir(path, mode="exact")
        np.testing.assert_allclose(out.result.per_layer, expected, rtol=1e-4)
        assert abs(float(out.result.overall) - expected_overall) < 4e-5
        assert (out.num_samples, out.num_vision_tokens) == (12, 12 * 9)
        assert out.num_text_tokens == sum(int(t.sum()) for _, _, t in samples)


@pytest.mark.parametrize("batch_bytes", [2**28, 4 * L * D * 25])
def test_streaming_mode_equals_the_float64_reference(sharded, batch_bytes):
    # 25 rows per batch: samples straddle batches and the last batch is mostly padding.
    directory, _, samples = sharded
    expected, _ = _reference(samples)
    out = hidden_states_mir(directory, mode="streaming", batch_bytes=batch_bytes)
    np.testing.assert_allclose(out.result.per_layer, expected, rtol=1e-3)
    assert abs(out.result.per_layer.sum() / expected.sum() - 1) < 1e-4
    assert out.timings["passes"] >= 2


def test_half_precision_files_and_layers_without_the_embeddings(tmp_path):
    rng = np.random.default_rng(1)
    samples = _samples(rng, 6)
    import ml_dtypes

    half = [(s.astype(ml_dtypes.bfloat16), v, t) for s, v, t in samples]
    path = _write(tmp_path / "bf16.safetensors", half)
    assert open_hidden_states(path).dtype == "BF16"
    rounded = [(s.astype(np.float32), v, t) for s, v, t in half]
    np.testing.assert_allclose(hidden_states_mir(path, mode="exact").result.per_layer,
                               _reference(rounded)[0], rtol=1e-4)
    # Layers 1..L only: the first stored array is layer 1.
    layers_only = [(s[1:].astype(np.float16), v, t) for s, v, t in samples]
    path = _write(tmp_path / "f16.safetensors", layers_only, metadata={"embeddings": "excluded"})
    expected = _reference([(s.astype(np.float32), v, t) for s, v, t in layers_only], first_layer=0)[0]
    np.testing.assert_allclose(hidden_states_mir(path, mode="exact").result.per_layer, expected, rtol=1e-4)


def test_jackknife_interval_equals_a_float64_jackknife_over_samples(sharded):
    # Without the outlier rule, a replicate is plain MIR on the samples outside its group.
    directory, _, samples = sharded
    groups = 4
    out = hidden_states_mir(directory, mode="exact", uncertainty="jackknife", num_groups=groups,
                            remove_outliers=False)
    full, full_overall = _reference(samples, remove_outliers=False)
    # Samples dealt round-robin: sample i in group i % G (jackknife_groups' documented rule).
    reps = [_reference([s for i, s in enumerate(samples) if i % groups != g], remove_outliers=False)
            for g in range(groups)]
    per_layer_reps = np.array([r[0] for r in reps])
    overall_reps = np.array([r[1] for r in reps])
    import scipy.stats

    t = scipy.stats.t.ppf(0.975, groups - 1)
    for value, replicates, se, interval in (
            (full, per_layer_reps, out.result.per_layer_se, out.result.per_layer_interval),
            (full_overall, overall_reps, out.result.overall_se, out.result.overall_interval)):
        mean = replicates.mean(axis=0)
        expected_se = np.sqrt((groups - 1) / groups * ((replicates - mean) ** 2).sum(axis=0))
        centre = groups * value - (groups - 1) * mean
        np.testing.assert_allclose(se, expected_se, rtol=2e-3)
        np.testing.assert_allclose(np.asarray(interval)[..., 0], centre - t * expected_se, rtol=2e-3, atol=1e-5)
        np.testing.assert_allclose(np.asarray(interval)[..., 1], centre + t * expected_se, rtol=2e-3, atol=1e-5)
    assert out.num_groups == groups


def test_streaming_refuses_intervals_in_one_line(sharded):
    with pytest.raises(ValueError, match="mode='exact'") as e:
        hidden_states_mir(sharded[0], mode="streaming", uncertainty="jackknife")
    assert "\n" not in str(e.value)


# --------------------------------------------------------------------------------------
# Bad files: one line each, naming the file and the sample.
# --------------------------------------------------------------------------------------


def _bad(path, sample, *words, mode="exact", read=None):
    """The one-line error of reading `read` (default: path), which names the file `path`."""
    with pytest.raises(HiddenStatesError) as e:
        hidden_states_mir(str(read or path), mode=mode)
    message = str(e.value)
    assert "\n" not in message and str(path) in message, message
    if sample is not None:
        assert repr(sample) in message, message
    for word in words:
        assert word in message, message
    return message


def test_wrong_shapes(tmp_path):
    rng = np.random.default_rng(2)
    good = _samples(rng, 3)
    states, vision, text = good[1]
    path = _write(tmp_path / "flat.safetensors", [good[0], (states[0], vision, text)])
    _bad(path, "000001", "hidden_states", "[L+1, S, D]")
    path = _write(tmp_path / "width.safetensors", [good[0], (states[..., :-1], vision, text)])
    _bad(path, "000001", "D=11", "D=12")
    path = _write(tmp_path / "mask.safetensors", [good[0], (states, vision[:-1], text)])
    _bad(path, "000001", "vision_mask", f"[{len(vision)}]")
    # A second shard whose samples have another depth names that shard and its sample.
    directory = tmp_path / "shards"
    directory.mkdir()
    _write(directory / "a.safetensors", good[:1])
    path = _write(directory / "b.safetensors", [(states[:-1], vision, text)], start=1)
    assert "L=2" in _bad(path, "000001", "L=3", read=directory)


def test_missing_masks(tmp_path):
    states, vision, _ = _samples(np.random.default_rng(3), 1)[0]
    path = tmp_path / "nomask.safetensors"
    save_file({"s7/hidden_states": states, "s7/vision_mask": vision}, str(path))
    _bad(path, "s7", "s7/text_mask")
    save_file({"s7/hidden_states": states, "s7/text_mask": vision}, str(path))
    _bad(path, "s7", "s7/vision_mask")


def test_truncated_shard(tmp_path):
    directory = tmp_path / "shards"
    directory.mkdir()
    samples = _samples(np.random.default_rng(4), 4)
    _write(directory / "a.safetensors", samples[:2])
    path = _write(directory / "b.safetensors", samples[2:], start=2)
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) - 100])  # the last tensors lose their tail
    assert "truncated" in _bad(path, None, read=directory)
    message = _bad(path, None, mode="streaming", read=directory)
    assert "'00000" in message  # a sample of this shard is named


def test_nan_values(tmp_path):
    samples = _samples(np.random.default_rng(5), 3)
    samples[2][0][2, 5, 3] = np.nan  # layer 2, a vision position of sample 2
    path = _write(tmp_path / "nan.safetensors", samples)
    for mode in ("exact", "streaming"):
        _bad(path, "000002", "NaN", "layer 2", "vision", mode=mode)
    # NaN at a position in neither set is not read, so not an error.
    clean = _samples(np.random.default_rng(5), 3)
    clean[0][0][1, -1, 0] = np.nan  # the padding position
    path = _write(tmp_path / "nan_in_padding.safetensors", clean)
    assert np.isfinite(hidden_states_mir(path, mode="exact").result.overall)


def test_other_layout_errors(tmp_path):
    states, vision, text = _samples(np.random.default_rng(6), 1)[0]
    path = _write(tmp_path / "overlap.safetensors", [(states, vision, vision | text)])
    _bad(path, "000000", "both vision_mask and text_mask")
    path = _write(tmp_path / "novision.safetensors", [(states, np.zeros_like(vision), text)])
    _bad(path, "000000", "no vision positions")
    garbage = tmp_path / "junk.safetensors"
    garbage.write_bytes(b"not a safetensors file at all")
    _bad(garbage, None, "not a safetensors file")
    path = tmp_path / "typo.safetensors"
    save_file({"x/hidden_states": states, "x/vision_mask": vision, "x/txt_mask": text}, str(path))
    _bad(path, None, "'x/txt_mask'")


# --------------------------------------------------------------------------------------
# Dumped by HF PyTorch from the tiny LLaVA: equal to our own forward of the same weights.
# --------------------------------------------------------------------------------------


def _dump_tool():
    spec = importlib.util.spec_from_file_location("dump_hidden_states",
                                                  os.path.join(ROOT, "tools", "dump_hidden_states.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def dumped_llava(tmp_path_factory):
    """The tiny HF LLaVA of tests/test_evaluate.py, its MIR batches, and their hidden states
    dumped by tools/dump_hidden_states.py from HF PyTorch (float32)."""
    torch = pytest.importorskip("torch", reason="the dump runs the HF PyTorch model")
    pytest.importorskip("transformers")
    from mir_jax.data import ByteTokenizer, make_mir_batches
    from mir_jax.data.images import CLIP_MEAN, CLIP_STD
    from tests.torch_init import save_random_llava, tiny_llava_config

    tokenizer = ByteTokenizer()
    config = tiny_llava_config(tokenizer)
    model_dir = str(tmp_path_factory.mktemp("tiny_llava"))
    hf_model = save_random_llava(config, 0, model_dir)
    batches = make_mir_batches("synthetic", "synthetic", tokenizer=tokenizer, num_samples=12,
                               image_size=28, mean=CLIP_MEAN, std=CLIP_STD, num_image_tokens=16,
                               batch_size=4, seq_len=256)

    def hf_inputs():
        for batch in batches:
            real = np.asarray(batch["attention_mask"]).any(axis=1)
            pixels = np.asarray(batch["pixel_values"])[real, 0].transpose(0, 3, 1, 2)
            yield {"input_ids": torch.from_numpy(np.asarray(batch["input_ids"])[real]).long(),
                   "attention_mask": torch.from_numpy(np.asarray(batch["attention_mask"])[real]).long(),
                   "pixel_values": torch.from_numpy(np.ascontiguousarray(pixels)).float()}

    output = str(tmp_path_factory.mktemp("dumped"))
    # Small shards: 12 samples over several files.
    count = _dump_tool().dump_hidden_states(hf_model, hf_inputs(), output, shard_bytes=60_000)
    return model_dir, batches, output, count


@pytest.mark.slow
def test_mir_from_hf_dump_equals_our_forward_of_the_same_weights(dumped_llava):
    from mir_jax.evals.mir import evaluate_mir
    from mir_jax.weights import load_weights

    model_dir, batches, output, count = dumped_llava
    assert count == 12 and len(os.listdir(output)) > 1
    index = open_hidden_states(output)
    assert (index.layers, index.dim, index.first_layer, index.dtype) == (3, 48, 1, "F32")
    model = load_weights(model_dir)[1]
    ours = evaluate_mir(model, lambda: iter(batches), mode="exact", progress=False)
    from_file = hidden_states_mir(output, mode="exact", index=index)
    assert from_file.num_vision_tokens == ours.num_vision_tokens == 12 * 16
    assert from_file.num_text_tokens == ours.num_text_tokens
    np.testing.assert_allclose(from_file.result.per_layer, ours.per_layer, rtol=1e-5)
    assert abs(float(from_file.result.overall) / ours.overall - 1) < 1e-5
    # Streaming from the file agrees with the exact value as docs/mir.md section 5 requires.
    streamed = hidden_states_mir(output, mode="streaming", index=index)
    np.testing.assert_allclose(streamed.result.per_layer, ours.per_layer, rtol=1e-3)


@pytest.mark.slow
def test_evaluate_cli_reads_hidden_states(dumped_llava, tmp_path):
    from tests.helpers import run_tool

    _, _, output, _ = dumped_llava
    expected = hidden_states_mir(output, mode="exact")
    out_dir = str(tmp_path / "out")
    run = run_tool("evaluate.py", f"--hidden_states={output}", "--mode=exact",
                   f"--output_dir={out_dir}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"{float(expected.result.overall):.6f}" in run.stdout
    record = next(iter(json.load(open(os.path.join(out_dir, "mir.json")))["results"].values()))
    np.testing.assert_allclose(record["per_layer"], expected.result.per_layer, rtol=1e-6)
    assert record["num_samples"] == 12 and os.path.exists(os.path.join(out_dir, "mir_per_layer.png"))
    bad = run_tool("evaluate.py", f"--hidden_states={tmp_path / 'nothing'}")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr


@pytest.mark.slow
def test_benchmark_runs_and_prints_its_ratios():
    import subprocess
    import sys

    out = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "hidden_states.py"), "--quick",
                          "--repeats=1", "--mir"], cwd=ROOT, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "XLA_FLAGS": ""})
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    assert out.stdout.startswith("versions: jax "), out.stdout[:300]
    assert "target >= 0.5" in out.stdout and "whole streaming MIR" in out.stdout


# --------------------------------------------------------------------------------------
# The command line: AutoProcessor on image and text files, against our own run of the same
# processor and model and the float64 reference.
# --------------------------------------------------------------------------------------

# The MIR paper's prompt, which the chat template saved with the processor renders (the
# reference writes it out rather than asking the template, so a tool that built its
# conversation differently would not match).
PAPER_PROMPT = "USER: <image>\n ASSISTANT: {text}"
CHAT_TEMPLATE = ("{% for m in messages %}{% if m['role'] == 'user' %}USER: {% for c in m['content'] %}"
                 "{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}{% endfor %}"
                 "{% else %} ASSISTANT: {% for c in m['content'] %}{{ c['text'] }}{% endfor %}{% endif %}"
                 "{% endfor %}")
NUM_DUMPED = 10  # x 16 image positions: 160 vision rows, more than the miniature LLM's width (128)


@pytest.fixture(scope="module")
def processor_llava(tmp_path_factory):
    """The shipped miniature base (an HF LLaVA directory) copied with an HF LlavaProcessor saved
    beside it, so that AutoProcessor.from_pretrained loads it as it loads a hub checkpoint's;
    a folder of images and one of texts; and the number of image positions the model expects."""
    pytest.importorskip("torch", reason="the dump tool runs the HF PyTorch model")
    transformers = pytest.importorskip("transformers")
    import shutil

    from PIL import Image

    from mir_jax.data import synthetic
    from mir_jax.data.images import CLIP_MEAN, CLIP_STD
    from mir_jax.data.miniature import BASE_DIR

    model_dir = str(tmp_path_factory.mktemp("miniature_hf"))
    shutil.copytree(BASE_DIR, model_dir, dirs_exist_ok=True)
    with open(os.path.join(BASE_DIR, "config.json")) as f:
        config = json.load(f)
    vision = config["vision_config"]
    # CLIP's patches plus its CLS position; the "default" strategy drops the CLS (HF's
    # LlavaProcessor counts image positions this way, so the model's and the processor's
    # counts agree only with both settings right).
    strategy = config["vision_feature_select_strategy"]
    expected = (vision["image_size"] // vision["patch_size"]) ** 2 + 1 - (strategy == "default")
    assert expected == config["image_seq_length"] == 16
    with open(os.path.join(BASE_DIR, "tokenizer_config.json")) as f:
        tokenizer_config = json.load(f)
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_file=os.path.join(BASE_DIR, "tokenizer.json"),
        **{k: tokenizer_config[k] for k in ("bos_token", "eos_token", "pad_token", "extra_special_tokens",
                                            "model_max_length")})
    assert tokenizer.convert_tokens_to_ids("<image>") == config["image_token_index"] == 3
    size = vision["image_size"]
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(CLIP_MEAN), image_std=list(CLIP_STD))
    processor = transformers.LlavaProcessor(
        image_processor=image_processor, tokenizer=tokenizer, patch_size=vision["patch_size"],
        num_additional_image_tokens=1, vision_feature_select_strategy=strategy, chat_template=CHAT_TEMPLATE)
    processor.save_pretrained(model_dir)

    # Images of several sizes and shapes (the processor resizes and crops them to 32 x 32, so
    # every sample still has 16 image positions), one more than --num_samples, and a file
    # that is no image; texts of several lengths, a .story cut at its first @highlight, and
    # a file that is no text.
    rng = np.random.default_rng(7)
    images, texts = tmp_path_factory.mktemp("images"), tmp_path_factory.mktemp("texts")
    for i in range(NUM_DUMPED + 1):
        if i % 3 == 2:
            pixels = rng.integers(0, 256, (24 + 8 * i, 40, 3), dtype=np.uint8)
        else:
            pixels = synthetic.render(synthetic.random_scene(rng), (32, 48, 64)[i % 3], rng)
        Image.fromarray(pixels).save(images / f"{i:02d}.png")
        captions = " ".join(synthetic.caption(synthetic.random_scene(rng)) for _ in range(1 + i % 4))
        if i == 4:
            (texts / f"{i:02d}.story").write_text(f"{captions}\n\n@highlight\n\nnot part of the sample\n")
        else:
            (texts / f"{i:02d}.txt").write_text(f"  {captions}\n")
    (images / "notes.txt").write_text("not an image")
    (texts / "notes.md").write_text("not a text")
    return model_dir, str(images), str(texts), expected


def _reference_dump(model_dir, images, texts, count):
    """Per sample (hidden states [L+1, S, D] float32, vision [S], text [S]) from our own run of
    the saved processor and the HF model on the first `count` files, the masks as the tool's
    docstring and docs/mir.md section 10 define them."""
    import torch
    import transformers
    from PIL import Image

    model = transformers.LlavaForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    image_files = [os.path.join(images, f"{i:02d}.png") for i in range(count)]
    text_files = sorted(f for f in os.listdir(texts) if not f.endswith(".md"))[:count]
    out = []
    for image_file, text_file in zip(image_files, text_files):
        with open(os.path.join(texts, text_file)) as f:
            text = f.read()
        text = (text.split("@highlight")[0] if text_file.endswith(".story") else text).strip()
        with Image.open(image_file) as image:
            image = image.convert("RGB")
        batch = processor(images=[image],
                          text=[PAPER_PROMPT.replace("{text}", text)], return_tensors="pt")
        with torch.no_grad():
            states = torch.stack(model(**batch, output_hidden_states=True).hidden_states)[:, 0].numpy()
        ids = batch["input_ids"][0].numpy()  # one sample per call: no padding
        vision = ids == model.config.image_token_index
        text_mask = np.arange(len(ids)) > np.flatnonzero(vision)[-1]
        out.append((states, vision, text_mask))
    return out


def _read_dump(path):
    from safetensors.numpy import load_file

    tensors = {}
    for shard in sorted(os.listdir(path)):
        tensors.update(load_file(os.path.join(path, shard)))
    names = sorted({k.split("/")[0] for k in tensors})
    return [tuple(tensors[f"{n}/{t}"] for t in ("hidden_states", "vision_mask", "text_mask")) for n in names]


@pytest.mark.slow
def test_dump_cli_with_autoprocessor_equals_our_run_and_the_float64_reference(processor_llava, tmp_path):
    from tests.helpers import run_tool

    model_dir, images, texts, image_positions = processor_llava
    output = str(tmp_path / "chat_template")
    run = run_tool("tools/dump_hidden_states.py", f"--model={model_dir}", f"--images={images}",
                   f"--texts={texts}", f"--num_samples={NUM_DUMPED}", f"--output={output}")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert f"wrote {NUM_DUMPED} samples to {output}" in run.stdout

    expected = _reference_dump(model_dir, images, texts, NUM_DUMPED)
    dumped = _read_dump(output)
    assert len(dumped) == NUM_DUMPED
    for (states, vision, text), (ref_states, ref_vision, ref_text) in zip(dumped, expected):
        assert int(vision.sum()) == image_positions  # the processor expanded <image> into 16
        np.testing.assert_array_equal(vision, ref_vision)
        np.testing.assert_array_equal(text, ref_text)
        assert states.shape == ref_states.shape and states.shape[0] == 9  # 8 layers + embeddings
        np.testing.assert_allclose(states, ref_states, rtol=1e-5, atol=1e-5)

    index = open_hidden_states(output)
    assert (index.layers, index.dim, index.first_layer) == (8, 128, 1)
    out = hidden_states_mir(output, mode="exact", index=index)
    vision_rows = [np.concatenate([s[k][v] for s, v, _ in expected]) for k in range(1, 9)]
    text_rows = [np.concatenate([s[k][t] for s, _, t in expected]) for k in range(1, 9)]
    # The file's MIR is the float32 kernel's on our own rows, to float32 rounding ...
    ours = [float(compute_mir(v[None], t[None]).per_layer[0]) for v, t in zip(vision_rows, text_rows)]
    np.testing.assert_allclose(out.result.per_layer, ours, rtol=1e-5)
    # ... and the float64 reference's to the kernel's float32 precision on these covariances:
    # the miniature model's vision covariance here has condition number 4e8 to 3e10 (layer 8
    # to 1), past float32's 1/eps (1.7e7), so its smallest eigenvalues are lost as numerically
    # zero (1.4e-4 relative measured; kernel.py's 1e-4 is for well-conditioned data).
    per_layer, overall = ref.mir(vision_rows, text_rows)
    np.testing.assert_allclose(out.result.per_layer, per_layer, rtol=5e-4)
    assert abs(float(out.result.overall) - overall) < 2e-4
    assert out.num_vision_tokens == NUM_DUMPED * image_positions
    assert out.num_text_tokens == sum(int(t.sum()) for _, _, t in expected)

    # --prompt with the paper's prompt gives the same samples as the chat template; small
    # --shard_gb puts them in several shards.
    prompted = str(tmp_path / "prompt")
    run = run_tool("tools/dump_hidden_states.py", f"--model={model_dir}", f"--images={images}",
                   f"--texts={texts}", f"--num_samples={NUM_DUMPED}", f"--output={prompted}",
                   f"--prompt={PAPER_PROMPT}", "--shard_gb=0.0005")
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    assert len(os.listdir(prompted)) > 1
    for (states, vision, text), (other, other_vision, other_text) in zip(dumped, _read_dump(prompted)):
        np.testing.assert_array_equal(states, other)
        np.testing.assert_array_equal(vision, other_vision)
        np.testing.assert_array_equal(text, other_text)


@pytest.mark.slow
def test_dump_cli_refuses_too_few_files_in_one_line(processor_llava, tmp_path):
    from tests.helpers import run_tool

    model_dir, images, texts, _ = processor_llava
    output = tmp_path / "out"
    # 11 images and 11 texts for 12 samples: exit 2 before the model loads, nothing written.
    run = run_tool("tools/dump_hidden_states.py", f"--model={model_dir}", f"--images={images}",
                   f"--texts={texts}", f"--num_samples={NUM_DUMPED + 2}", f"--output={output}")
    assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
    assert run.stderr.strip() == (f"dump_hidden_states.py: error: {NUM_DUMPED + 1} images and "
                                  f"{NUM_DUMPED + 1} texts for --num_samples={NUM_DUMPED + 2}")
    assert not output.exists()


@pytest.mark.slow
def test_dump_cli_refuses_a_cut_into_the_image_or_past_all_text_in_one_line(processor_llava, tmp_path):
    import transformers

    from tests.helpers import run_tool

    model_dir, images, texts, _ = processor_llava
    processor = transformers.AutoProcessor.from_pretrained(model_dir)
    from PIL import Image

    tool = _dump_tool()  # the first sample as the tool picks and reads it
    prompt = PAPER_PROMPT.replace("{text}", tool._text(tool._sorted_files(texts, (".txt", ".story"))[0]))
    image_file = tool._sorted_files(images, tool.IMAGE_SUFFIXES)[0]

    with Image.open(image_file) as image:
        ids = processor(images=[image.convert("RGB")], text=[prompt], return_tensors="np")["input_ids"][0]
    last_image = int(np.flatnonzero(ids == 3).max())  # <image> is id 3 in the miniature vocabulary
    # Cut 4 positions into the image; then exactly after it, which leaves no text position.
    for max_length, says in ((last_image - 3, "max_length"), (last_image + 1, "no text position after the image")):
        output = tmp_path / f"cut_{max_length}"
        run = run_tool("tools/dump_hidden_states.py", f"--model={model_dir}", f"--images={images}",
                       f"--texts={texts}", "--num_samples=2", f"--output={output}", f"--prompt={PAPER_PROMPT}",
                       f"--max_length={max_length}")
        assert run.returncode == 2, run.stdout[-2000:] + run.stderr[-2000:]
        assert len(run.stderr.strip().splitlines()) == 1 and says in run.stderr, run.stderr
        assert run.stderr.startswith("dump_hidden_states.py: error: ") and not output.exists()
