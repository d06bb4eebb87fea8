"""End-to-end MIR evaluation against HF PyTorch hidden states + a float64 transcription of docs/mir.md."""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from tests import reference_mir as ref

# torch only builds and runs the HF reference models (the tiny_llava fixture): without it the
# tests that need them skip and the rest run.
NEEDS_TORCH = "the HF PyTorch models are the reference here; pip install torch (a CPU build: see README)"
transformers = pytest.importorskip("transformers")

from mir_jax.data import ByteTokenizer, make_mir_batches  # noqa: E402
from mir_jax.data.images import CLIP_MEAN, CLIP_STD  # noqa: E402
from mir_jax.evals.mir import evaluate_mir  # noqa: E402
from mir_jax.mir.tokens import mir_token_masks  # noqa: E402
from mir_jax.sharding import make_mesh  # noqa: E402
from mir_jax.weights import load_weights  # noqa: E402
from tests.helpers import run_tool  # noqa: E402
from tests.torch_init import save_random_llava, tiny_llava_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMAGE_SIZE, PATCH = 28, 7  # 16 patches -> K = 16 image tokens (CLIP drops its class token)
TOKENIZER = ByteTokenizer()


@pytest.fixture(scope="module")
def tiny_llava(tmp_path_factory):
    """A random HF LlavaForConditionalGeneration (CLIP + Llama) saved in HF's own format."""
    pytest.importorskip("torch", reason=NEEDS_TORCH)
    config = tiny_llava_config(TOKENIZER, IMAGE_SIZE, PATCH)
    path = str(tmp_path_factory.mktemp("tiny_llava"))
    return path, save_random_llava(config, 0, path)


def _batches(num_samples=8, batch_size=8):
    return make_mir_batches("synthetic", "synthetic", tokenizer=TOKENIZER, num_samples=num_samples,
                            image_size=IMAGE_SIZE, mean=CLIP_MEAN, std=CLIP_STD, num_image_tokens=16,
                            batch_size=batch_size, seq_len=256)


def _reference_from_hf(hf_model, batches):
    """Spec transcription (float64) on HF PyTorch's own hidden states, tokens chosen by hand."""
    vision_layers, text_layers, _, _ = _hf_rows(hf_model, batches)
    return ref.mir(vision_layers, text_layers)


def _hf_rows(hf_model, batches):
    """HF PyTorch's hidden states of MIR's tokens, float64: (vision rows [L][n, D], text rows
    [L][m, D], the sample of each vision row [n], of each text row [m]), samples in batch order."""
    import torch

    vision_layers, text_layers, vision_samples, text_samples, sample = None, None, [], [], 0
    for batch in batches:
        ids = np.asarray(batch["input_ids"])
        attention = np.asarray(batch["attention_mask"])
        real = attention.any(axis=1)
        pixels = np.asarray(batch["pixel_values"])[:, 0].transpose(0, 3, 1, 2)
        with torch.no_grad():
            out = hf_model(input_ids=torch.from_numpy(ids[real]).long(),
                           attention_mask=torch.from_numpy(attention[real]).long(),
                           pixel_values=torch.from_numpy(pixels[real]).float(),
                           output_hidden_states=True)
        states = [h.double().numpy() for h in out.hidden_states[1:]]
        if vision_layers is None:
            vision_layers, text_layers = [[] for _ in states], [[] for _ in states]
        for row, (row_ids, row_attention) in enumerate(zip(ids[real], attention[real])):
            image_positions = np.flatnonzero(row_ids == TOKENIZER.image_token_id)
            last = image_positions.max()
            text_positions = [p for p in range(last + 1, len(row_ids)) if row_attention[p]]
            for layer, h in enumerate(states):
                vision_layers[layer].append(h[row, image_positions])
                text_layers[layer].append(h[row, text_positions])
            vision_samples += [sample] * len(image_positions)
            text_samples += [sample] * len(text_positions)
            sample += 1
    vision_layers = [np.concatenate(v) for v in vision_layers]
    text_layers = [np.concatenate(t) for t in text_layers]
    return vision_layers, text_layers, np.array(vision_samples), np.array(text_samples)


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_mir_matches_float64_reference_on_hf_hidden_states(tiny_llava):
    path, hf_model = tiny_llava
    batches = _batches(num_samples=8, batch_size=4)
    expected_layers, expected_overall = _reference_from_hf(hf_model, batches)
    _, model = load_weights(path)[:2]
    for mode in ("exact", "streaming"):
        result = evaluate_mir(model, lambda: iter(batches), mode=mode, progress=False)
        assert result.per_layer.shape == (3,)
        np.testing.assert_allclose(result.per_layer, expected_layers, rtol=1e-3)
        assert abs(result.overall / expected_overall - 1) < 1e-3
        assert result.num_samples == 8
        assert result.num_vision_tokens == 8 * 16
        assert np.isfinite(result.lm_loss) and result.perplexity > 1


def test_interval_over_samples_matches_float64_jackknife_on_hf_hidden_states(tiny_llava):
    """evaluate_mir(..., uncertainty="jackknife"): every token of a sample in that sample's group
    (sample k in group k % G), checked against the estimator written out in float64
    (tests/test_mir_uncertainty.py) on HF PyTorch's hidden states."""
    from tests.test_mir_uncertainty import reference_jackknife

    path, hf_model = tiny_llava
    batches = _batches(num_samples=8, batch_size=4)
    vision, text, vision_samples, text_samples = _hf_rows(hf_model, batches)
    want = reference_jackknife(vision, text, vision_samples % 4, text_samples % 4)
    model = load_weights(path).model
    got = evaluate_mir(model, lambda: iter(batches), mode="exact", progress=False,
                       uncertainty="jackknife", num_groups=4)
    np.testing.assert_allclose(got.interval["per_layer_replicates"], want["replicates"], rtol=2e-3)
    np.testing.assert_allclose(got.interval["per_layer_se"], want["se"], rtol=2e-2, atol=1e-4)
    np.testing.assert_allclose(got.interval["overall_interval"], want["overall_interval"], rtol=2e-3, atol=1e-4)
    assert "jackknife over 4 sample groups" in got.format()
    with pytest.raises(ValueError, match="needs mode='exact'"):
        evaluate_mir(model, lambda: iter(batches), mode="streaming", progress=False, uncertainty="jackknife")


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_one_device_equals_eight(tiny_llava):
    path, _ = tiny_llava
    assert jax.device_count() == 8
    batches = _batches(num_samples=8, batch_size=8)
    _, model = load_weights(path)[:2]
    single = evaluate_mir(model, lambda: iter(batches), progress=False)
    sharded = evaluate_mir(model, lambda: iter(batches), mesh=make_mesh((8, 1, 1)), progress=False)
    np.testing.assert_allclose(sharded.per_layer, single.per_layer, rtol=1e-4)
    assert abs(sharded.lm_loss - single.lm_loss) < 1e-4


def test_token_selection_on_hand_built_batch():
    image = [False, True, True, True, False, False, False]
    modality = np.array([
        [False, True, True, False, False, False, False],  # text after image, then 2 pads
        [False, False, False, False, False, False, False],  # no image: nothing selected
        [True, True, False, True, True, False, False],  # two images: text after the last one
        image,
    ])
    attention = np.array([
        [1, 1, 1, 1, 1, 0, 0],
        [1, 1, 1, 1, 1, 1, 1],
        [1, 1, 1, 1, 1, 1, 1],
        [0, 0, 1, 1, 1, 1, 1],  # left padding: image position 1 is padding
    ])
    vision, text = map(np.asarray, mir_token_masks(modality, attention))
    np.testing.assert_array_equal(vision, [
        [0, 1, 1, 0, 0, 0, 0], [0] * 7, [1, 1, 0, 1, 1, 0, 0], [0, 0, 1, 1, 0, 0, 0]])
    np.testing.assert_array_equal(text, [
        [0, 0, 0, 1, 1, 0, 0], [0] * 7, [0, 0, 0, 0, 0, 1, 1], [0, 0, 0, 0, 1, 1, 1]])


@pytest.mark.slow
def test_cli_writes_table_json_and_plot(tiny_llava, tmp_path):
    path, _ = tiny_llava
    out = tmp_path / "out"
    cache = tmp_path / "jax_cache"
    run = run_tool("evaluate.py", f"--compare={path},{path}", "--num_samples=4", "--batch_size=4", "--seq_len=256",
               "--method=legacy_fast", "--mode=exact", f"--output_dir={out}", "--noprogress",
               JAX_COMPILATION_CACHE_DIR=str(cache), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    assert run.returncode == 0, run.stderr[-3000:]
    assert cache.is_dir() and any(cache.iterdir())  # the persistent compilation cache is on
    assert "legacy_fast" in run.stdout and "NOT a Fréchet distance" in run.stdout
    assert "MIR overall" in run.stdout and "LM loss" in run.stdout
    record = json.loads((out / "mir.json").read_text())
    assert len(record["results"]) == 2
    first = next(iter(record["results"].values()))
    assert len(first["per_layer"]) == 3 and first["method"] == "legacy_fast" and "note" in first
    assert (out / "mir_per_layer.png").stat().st_size > 1000


@pytest.mark.slow
def test_cli_bad_inputs_are_clear_and_write_nothing(tiny_llava, tmp_path):
    path, _ = tiny_llava
    out = tmp_path / "out"
    missing = run_tool("evaluate.py", f"--checkpoint={tmp_path / 'nope'}", f"--output_dir={out}")
    assert missing.returncode != 0 and "does not exist" in missing.stderr
    texts = tmp_path / "texts"
    texts.mkdir()
    for i in range(2):
        (texts / f"{i}.txt").write_text(f"story number {i}")
    few = run_tool("evaluate.py", f"--hf_model={path}", f"--texts={texts}", "--num_samples=5", f"--output_dir={out}")
    assert few.returncode != 0 and "needs 5 samples" in few.stderr
    images = tmp_path / "images"
    images.mkdir()
    from PIL import Image

    for i in range(3):
        Image.new("RGB", (40, 30), (i * 50, 100, 200)).save(images / f"{i}.png")
    (images / "3.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    corrupt = run_tool("evaluate.py", f"--hf_model={path}", f"--images={images}", "--num_samples=4", "--batch_size=4",
                   f"--output_dir={out}")
    assert corrupt.returncode != 0
    assert "error:" in corrupt.stderr and "corrupt_image" in corrupt.stderr
    assert "3.png" in corrupt.stderr  # the bad file is named in the log
    assert not out.exists() or not (out / "mir.json").exists()


@pytest.mark.slow
def test_our_checkpoint_round_trip_gives_the_in_loop_mir(tmp_path):
    """Train a tiny model for 6 steps (MIR evaluated in the loop on the final parameters), then
    load the workdir the way `evaluate.py --checkpoint` does: same MIR on the same batches."""
    from mir_jax.evals.loading import load_model
    from mir_jax.train.loop import train_and_evaluate
    from tests import train_fixtures

    config = train_fixtures.tiny_train_config()
    config.evals = {"mir": {"every": 0, "num_samples": 8, "batch_size": 8, "seq_len": 256}}  # at the end
    result = train_and_evaluate(config, str(tmp_path))
    in_loop = result.eval["mir"]
    # The loop says what its MIR was computed on (set beside evaluate.py's at a glance).
    assert result.eval["mir_samples"] == 8 and result.eval["mir_row_length"] == 256

    pre = load_model(str(tmp_path))
    model_config, model = pre.model.config, pre.model
    assert model_config.text.num_layers == 2 and pre.image.size == 32
    batches = make_mir_batches("synthetic", "synthetic", tokenizer=pre.tokenizer,
                               num_samples=8, image_size=32, mean=pre.image.mean, std=pre.image.std,
                               num_image_tokens=model_config.num_image_tokens, batch_size=8, seq_len=256)
    reloaded = evaluate_mir(model, lambda: iter(batches), progress=False)
    assert abs(reloaded.overall - in_loop) < 1e-4
    assert (result.eval["mir_vision_tokens"], result.eval["mir_text_tokens"]) == (
        8 * model_config.num_image_tokens, reloaded.num_text_tokens)
    with pytest.raises(FileNotFoundError, match="not a mir-jax training workdir"):
        load_model(str(tmp_path / "nothing"))


def test_plain_template_mir_batches_and_selection():
    """--template=plain: [bos] image×K text [eos]; MIR text tokens are exactly the text after it."""
    batch = make_mir_batches("synthetic", ["a short unrelated story."], tokenizer=TOKENIZER,
                             num_samples=1, image_size=IMAGE_SIZE, num_image_tokens=16,
                             batch_size=1, seq_len=64, template="plain")[0]
    ids, attention = np.asarray(batch["input_ids"][0]), np.asarray(batch["attention_mask"][0])
    story = list(b"a short unrelated story.")
    expected = [TOKENIZER.bos_id] + [TOKENIZER.image_token_id] * 16 + [b + 4 for b in story] + [TOKENIZER.eos_id]
    np.testing.assert_array_equal(ids[: len(expected)], expected)
    assert attention.sum() == len(expected)
    vision, text = map(np.asarray, mir_token_masks(ids[None] == TOKENIZER.image_token_id, attention[None]))
    assert vision.sum() == 16 and text.sum() == len(story) + 1  # the story and its eos


@pytest.mark.slow
def test_cli_tfds_images_without_the_extra_is_a_clear_error(tiny_llava, tmp_path):
    path, _ = tiny_llava
    run = run_tool("evaluate.py", f"--hf_model={path}", "--images=tfds:coco_captions", f"--tfds_data_dir={tmp_path}",
               f"--output_dir={tmp_path / 'out'}")
    assert run.returncode != 0
    assert "tensorflow-datasets" in run.stderr or "not prepared" in run.stderr
    assert not (tmp_path / "out").exists()


# After the image, vicuna_v1 renders "\n ASSISTANT: {story}</s>": 13 bytes, the story, eos.
AFTER_IMAGE = len("\n ASSISTANT: ")


def _long_text_inputs(tmp_path):
    """Three stories, one far past the old default cut (K + 448 = 464 tokens), a TextVQA-style
    question JSONL whose images live in another folder (LLaVA's --image-folder)."""
    from PIL import Image

    texts = tmp_path / "texts"
    texts.mkdir()
    stories = ["A short story about nothing.", "Second story, " * 10 + "end.",
               ("The long story goes on. " * 60).strip()]
    for i, story in enumerate(stories):
        (texts / f"{i}.story").write_text(story + "\n\n@highlight\n\nnot part of the text")
    images = tmp_path / "imgs"
    images.mkdir()
    rows = []
    for i in range(3):
        Image.new("RGB", (40, 30), (i * 60, 90, 200)).save(images / f"im{i}.png")
        rows.append({"question_id": i, "image": f"im{i}.png", "text": "What is written?"})
    questions = tmp_path / "meta" / "llava_textvqa_val_v051_ocr.jsonl"
    questions.parent.mkdir()
    questions.write_text("\n".join(json.dumps(r) for r in rows))
    return texts, stories, images, questions


@pytest.mark.slow
def test_cli_feeds_long_texts_whole_reads_llava_jsonl_and_writes_beside_the_model(tiny_llava, tmp_path):
    path, _ = tiny_llava
    texts, stories, images, questions = _long_text_inputs(tmp_path)
    assert len(stories[2]) > 16 + 448  # longer than the old default sequence length
    run = run_tool("evaluate.py", f"--hf_model={path}", f"--images={questions}", f"--image_folder={images}",
               f"--texts={texts}", "--num_samples=3", "--batch_size=2", "--mode=exact",
               "--dtype=float16", "--noprogress", cwd=str(tmp_path))
    assert run.returncode == 0, run.stderr[-3000:]
    out = os.path.normpath(path) + "_mir_eval"  # beside the model, nothing in the cwd
    record = json.loads(open(os.path.join(out, "mir.json")).read())
    assert not os.path.exists(tmp_path / "mir_eval")
    result = next(iter(record["results"].values()))
    expected_text = sum(AFTER_IMAGE + len(s.encode()) + 1 for s in stories)
    assert result["num_text_tokens"] == expected_text  # every text token reached MIR
    assert result["num_vision_tokens"] == 3 * 16
    assert result["data"]["truncated_samples"] == 0 and result["data"]["dtype"] == "float16"
    assert "truncated" not in run.stdout


@pytest.mark.slow
def test_cli_counts_truncation_and_prints_the_published_fast_verdict(tiny_llava, tmp_path):
    path, _ = tiny_llava
    texts, stories, images, questions = _long_text_inputs(tmp_path)
    out = tmp_path / "out"
    run = run_tool("evaluate.py", f"--hf_model={path}", f"--images={questions}", f"--image_folder={images}",
               f"--texts={texts}", "--num_samples=3", "--batch_size=2", "--seq_len=600",
               "--method=published_fast", f"--output_dir={out}", "--noprogress")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "1 of 3 samples are longer than --seq_len=600 tokens" in run.stdout
    result = next(iter(json.loads((out / "mir.json").read_text())["results"].values()))
    assert result["data"]["truncated_samples"] == 1
    # The long one is cut at 600 tokens: [bos] system " USER: " image×16, then its text.
    from mir_jax.data.templates import VICUNA_SYSTEM

    before_image = 1 + len(VICUNA_SYSTEM + " ") + len("USER: ") + 16
    expected_text = sum(AFTER_IMAGE + len(s.encode()) + 1 for s in stories[:2]) + 600 - before_image
    assert result["num_text_tokens"] == expected_text
    assert "NOT a Fréchet distance" in run.stdout and "published_fast:" in run.stdout
    assert "verdict" in result and len(result["diagnostics"]["condition"]) == 3


@pytest.mark.slow
def test_compute_dtypes_move_mir_little_and_really_compute_in_that_dtype(tiny_llava):
    from mir_jax.models import with_compute_dtype

    path, _ = tiny_llava
    batches = _batches(num_samples=8, batch_size=8)
    _, model = load_weights(path)[:2]
    base = evaluate_mir(model, lambda: iter(batches), mode="exact", progress=False)
    for dtype, tolerance in (("bfloat16", 5e-2), ("float16", 1e-2)):
        cast = with_compute_dtype(model, dtype)
        b = batches[0]
        out = cast(b["input_ids"], b["pixel_values"], b["image_mask"],
                   attention_mask=b["attention_mask"], output_hidden_states=True)
        assert out.hidden_states.dtype == np.dtype(dtype)
        ours = evaluate_mir(cast, lambda: iter(batches), mode="exact", progress=False)
        change = np.max(np.abs(ours.per_layer / base.per_layer - 1))
        assert 0 < change < tolerance, (dtype, change)
    assert model.config.dtype == "float32"  # the original is untouched


def test_seed_changes_the_synthetic_corpus_and_plot_ticks_are_layers(tmp_path):
    from mir_jax.evals.mir import MIREvaluation, plot_per_layer

    kwargs = dict(tokenizer=TOKENIZER, num_samples=2, image_size=IMAGE_SIZE, num_image_tokens=16,
                  batch_size=2, seq_len=512)
    a, a_again, b = (make_mir_batches("synthetic", "synthetic", seed=s, **kwargs)[0] for s in (0, 0, 1))
    np.testing.assert_array_equal(a["input_ids"], a_again["input_ids"])
    assert not np.array_equal(a["pixel_values"], b["pixel_values"])
    assert not np.array_equal(a["input_ids"], b["input_ids"])
    res = MIREvaluation(per_layer=np.array([3.0, 2.0, 1.5, 1.0]), overall=0.87, method="eigh",
                        mode="exact", num_samples=2, num_vision_tokens=32, num_text_tokens=40,
                        lm_loss=1.0, perplexity=2.7, timings={})
    ticks = plot_per_layer({"m": res}, str(tmp_path / "p.png"))
    assert ticks and all(t == int(t) for t in ticks)


@pytest.mark.slow
def test_compilation_cache_folder_default_override_and_off(tmp_path):
    code = "from mir_jax import compile_cache; print(compile_cache.enable())"
    base = {k: v for k, v in os.environ.items()
            if k not in ("JAX_COMPILATION_CACHE_DIR", "MIR_JAX_COMPILATION_CACHE")}

    def run(**extra):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env={**base, "XDG_CACHE_HOME": str(tmp_path), **extra}, timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        return out.stdout.strip().splitlines()[-1]

    assert run() == os.path.join(str(tmp_path), "mir_jax", "jax")
    assert run(JAX_COMPILATION_CACHE_DIR=str(tmp_path / "mine")) == str(tmp_path / "mine")
    assert run(MIR_JAX_COMPILATION_CACHE="0") == "None"


@pytest.mark.slow
def test_cli_downstream_evaluators_on_benchmark_files(tiny_llava, tmp_path):
    """--evals with real-format files (caption JSONL, POPE JSONL, multiple-choice JSONL) and
    the embedded VQA 0- and 2-shot: one table, evals.json, the plot and LLaVA answer files."""
    from PIL import Image

    path, _ = tiny_llava
    data = tmp_path / "data"
    data.mkdir()
    for i in range(4):
        Image.new("RGB", (30, 20), (60 * i, 100, 200)).save(data / f"{i}.png")
    rows = {"captions.jsonl": [{"image": f"{i}.png", "captions": [f"picture {i}", "a picture"]} for i in range(4)],
            "coco_pope_random.jsonl": [{"question_id": 10 + i, "image": f"{i}.png", "text": "Is there a dog?",
                                        "label": "yes" if i % 2 else "no"} for i in range(4)],
            "mc.jsonl": [{"question_id": f"m{i}", "image": f"{i}.png", "question": "Which?",
                          "options": ["red", "blue", "green"], "answer": "B"} for i in range(4)]}
    for name, records in rows.items():
        (data / name).write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "out"
    run = run_tool("evaluate.py", f"--hf_model={path}", "--evals=caption,vqa,pope,multiple_choice", "--shots=0,2",
               f"--caption_data=jsonl:path={data / 'captions.jsonl'}",
               f"--pope_data=pope:jsonl={data / 'coco_pope_random.jsonl'}",
               f"--mc_data=mc_jsonl:path={data / 'mc.jsonl'}", "--num_samples=4", "--max_new_tokens=4",
               f"--output_dir={out}", "--noprogress")
    assert run.returncode == 0, run.stderr[-3000:]
    scores = json.loads((out / "evals.json").read_text())["scores"]
    (model,) = scores
    keys = set(scores[model])
    assert {"caption/cider", "caption_2shot/cider", "vqa/accuracy", "vqa_2shot/accuracy", "pope/f1",
            "multiple_choice/accuracy", "multiple_choice/likelihood_accuracy"} <= keys
    assert "mir/mir" not in keys  # --evals without mir: no MIR run, no mir.json
    assert not (out / "mir.json").exists()
    assert "pope/yes_ratio" in run.stdout and "vqa_2shot/accuracy" in run.stdout  # the table
    pope = [json.loads(line) for line in (out / "pope_predictions.jsonl").read_text().splitlines()]
    assert [p["question_id"] for p in pope] == [10, 11, 12, 13]  # the source file's ints
    assert {"prompt", "text", "answer_id", "model_id"} <= set(pope[0]) and pope[0]["model_id"] == model
    pope_scores = json.loads((out / "pope_scores.json").read_text())
    assert pope_scores["details"]["per_category"].keys() == {"random"}  # from the file name
    assert (out / "scores.png").stat().st_size > 1000


@pytest.mark.slow
def test_cli_downstream_bad_inputs_are_one_line(tiny_llava, tmp_path):
    path, _ = tiny_llava
    for args, message in [(["--evals=vqq"], "unknown evaluator(s) ['vqq']"),
                          (["--evals=pope", f"--pope_data=pope:jsonl={tmp_path / 'nope.jsonl'}"], "nope.jsonl"),
                          (["--evals=vqa", "--vqa_data=vqav2:questions=/q.json"], "load_vqav2 takes"),
                          (["--evals=vqa", "--vqa_data=pope:jsonl=/x.jsonl"], "holds pope records"),
                          (["--evals=caption", "--shots=two"], "--shots=two")]:
        run = run_tool("evaluate.py", f"--hf_model={path}", *args, f"--output_dir={tmp_path / 'out'}", "--noprogress")
        assert run.returncode == 2, (args, run.stderr[-2000:])
        last = run.stderr.strip().splitlines()[-1]
        assert last.startswith("evaluate.py: error:") and message in last, (args, last)
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_cli_uncertainty_writes_intervals_and_paired_differences(tiny_llava, tmp_path):
    path, _ = tiny_llava
    out = tmp_path / "out"
    common = ("--num_samples=8", "--batch_size=4", "--seq_len=256", "--uncertainty=jackknife",
              "--uncertainty_groups=4", "--noprogress")
    refused = run_tool("evaluate.py", f"--hf_model={path}", *common, f"--output_dir={out}")
    assert refused.returncode == 2 and not out.exists()
    assert refused.stderr.strip().splitlines()[-1] == ("evaluate.py: error: --uncertainty=jackknife needs "
                                                       "--mode=exact (the streaming accumulator keeps no "
                                                       "per-group statistics)")
    run = run_tool("evaluate.py", f"--compare={path},{path}", "--mode=exact", *common, f"--output_dir={out}")
    assert run.returncode == 0, run.stderr[-3000:]
    records = json.loads((out / "mir.json").read_text())["results"]
    a, b = records  # the same model twice: names made unique by evaluate.py
    for record in records.values():
        low, high = record["interval"]["overall_interval"]
        assert low < record["overall"] < high and record["interval"]["num_groups"] == 4
        assert np.shape(record["interval"]["per_layer_replicates"]) == (4, 3)
    # The same weights on the same sample groups: every replicate difference is 0.
    diff = records[a]["paired_differences"][b]
    assert diff["overall"] == 0 and diff["overall_interval"] == [0.0, 0.0] and not diff["excludes_zero"]
    assert "within what the choice of samples explains" in run.stdout
