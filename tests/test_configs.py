"""Every recipe in configs/ runs with :runlocal; config checks before anything heavy; list- and
dict-valued overrides (config.evals as a dict keyed by name); the too_long error names the length
needed and the key to raise."""

from __future__ import annotations

import glob
import importlib
import json
import os

import numpy as np
import pytest

from mir_jax.data import BadSampleFractionError, make_train_iterator
from mir_jax.data.miniature import BASE_DIR as MINIATURE_BASE
from mir_jax.models import LlavaConfig
from mir_jax.train.config_check import ConfigError, JsonDictParser, JsonListParser, check_config
from mir_jax.train.loop import train_and_evaluate
from mir_jax.train.metrics import read_jsonl
from tests import train_fixtures as fx


def _recipes() -> list[str]:
    """Every configs/*.py that defines get_config (found, not listed, so a new one is covered)."""
    names = []
    for path in sorted(glob.glob(os.path.join(fx.ROOT, "configs", "*.py"))):
        name = os.path.splitext(os.path.basename(path))[0]
        if hasattr(importlib.import_module(f"configs.{name}"), "get_config"):
            names.append(name)
    return names


RECIPES = _recipes()
# Recipes with no full-size form: stage 0 at full size is a pre-trained CLIP and LLM
# (mir_jax.weights.hf.build_stage1), so configs/stage0.py without runlocal is a one-line ValueError.
RUNLOCAL_ONLY = ("stage0",)
FULL_SIZE = [n for n in RECIPES if n not in RUNLOCAL_ONLY]
# Stage 0 runs in four phases (configs/stage0.py), each its own data; its runlocal is the first.
RUNLOCAL_ARG = {"stage0": "runlocal,llm"}
# Options beyond runlocal that change the data (moca on the stage-1 recipe, stage 0's later phases).
VARIANTS = [(n, RUNLOCAL_ARG.get(n, "runlocal")) for n in RECIPES] + [
    ("moca", "runlocal,pretrain"), ("stage0", "runlocal,vision"), ("stage0", "runlocal,choice"),
    ("stage0", "runlocal,settle")]


def _config(name: str, arg: str | None = "runlocal"):
    c = importlib.import_module(f"configs.{name}").get_config(RUNLOCAL_ARG.get(name, arg) if arg == "runlocal" else arg)
    if name == "stage0" and arg and "llm" not in arg:  # it starts from the phase before's workdir
        c.init_from = MINIATURE_BASE
    return c


def test_the_recipes_are_found():
    assert {"mm1_mix", "llava15_pretrain", "llava15_sft", "moca", "stage0"} <= set(RECIPES)
    assert "common" not in RECIPES


@pytest.mark.parametrize("name", RUNLOCAL_ONLY)
def test_runlocal_only_recipes_say_so_in_one_line(name):
    with pytest.raises(ValueError) as e:
        _config(name, None)
    assert "runlocal" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("name, arg", [(n, None) for n in FULL_SIZE] + VARIANTS)
def test_every_data_and_trainable_key_can_be_overridden(name, arg):
    # --config.data.KEY / --config.trainable.KEY must name a key the recipe holds (ml_collections
    # refuses new keys): every key the data pipeline and the partition read is there, with the
    # library's default unless the recipe sets it (hand-listed: the keys a recipe sets).
    from mir_jax.data.mixture import DEFAULTS
    from mir_jax.models.partition import RECIPE_DEFAULTS
    from mir_jax.train.config_check import unknown_key

    c = _config(name, arg)
    for key in set(DEFAULTS) - {"eval_sources"}:
        assert unknown_key(c, f"data.{key}") is None, key
    for key in RECIPE_DEFAULTS:
        assert unknown_key(c, f"trainable.{key}") is None, key
    set_by_recipes = {"sources", "pack", "system", "num_threads"}
    for key in set(DEFAULTS) - {"eval_sources"} - set_by_recipes:
        assert c.data[key] == DEFAULTS[key], key


@pytest.mark.parametrize("name, arg", VARIANTS)
def test_runlocal_data_fits_the_recipe(name, arg):
    """The embedded corpus has no broken records, so any skipped sample means the recipe's
    seq_len / max_images cannot hold its own data (vicuna_v1 at seq_len 128 skipped them all)."""
    c = _config(name, arg)
    check_config(c)
    mc = LlavaConfig.from_dict(c.model.to_dict())
    it = make_train_iterator(c.data, tokenizer=c.tokenizer, image_size=mc.vision.image_size,
                             num_image_tokens=mc.num_image_tokens, batch_size=int(c.batch_size),
                             seq_len=int(c.seq_len), seed=0)
    while sum(s["seen"] for s in it.bad_samples.values()) < 300:
        batch = next(it)
        assert batch["input_ids"].shape == (c.batch_size, c.seq_len)
    for source, s in it.bad_samples.items():
        assert s["bad"] == 0, (source, s)


@pytest.mark.slow
@pytest.mark.parametrize("name", RECIPES)
def test_runlocal_trains_a_few_steps(name, tmp_path):
    """Each recipe's runlocal config as train.py gets it, shortened to 2 steps. The held-out and
    MIR sets are built (their data goes through the recipe's template and seq_len) but not
    evaluated: compiling the evaluation would double the time, and the loop's evaluation is
    tested elsewhere (test_evaluate, test_evals, the multi-host tests)."""
    from mir_jax.train.evaluations import Evaluations
    from mir_jax.train.loop import Setup

    c = _config(name)
    c.total_steps, c.log_every = 2, 1
    c.checkpoint.every, c.checkpoint.async_save = 0, False
    c.evals = {key: {**c.evals[key].to_dict(), "num_samples": 16} for key in ("loss", "mir")}
    setup = Setup(c, str(tmp_path / "sets"))
    try:
        Evaluations(setup, *setup.initial_state()[1:])  # the fixed sets, as the loop builds them
    finally:
        setup.checkpointer.close()
    c.evals = {}  # every evaluator runs at the end
    result = train_and_evaluate(c, str(tmp_path))
    assert result.step == 2 and np.isfinite(result.loss)
    rows = read_jsonl(str(tmp_path / "metrics.jsonl"))
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2]
    (data,) = [r for r in rows if r["split"] == "data"]  # the bad-sample counts, once at the end
    assert data["step"] == 2
    for source, s in data["bad_samples"].items():
        assert s["seen"] > 0 and s["bad"] == 0, (source, s)


# ----- checks before anything heavy ------------------------------------------------------------

@pytest.mark.parametrize("name", FULL_SIZE)
def test_full_size_recipes_say_everything_that_must_be_set(name, tmp_path):
    with pytest.raises(ConfigError) as e:
        check_config(_config(name, None))
    msg = str(e.value)
    assert "\n" not in msg
    assert "tokenizer is not set: --config.tokenizer=DIR" in msg
    assert "init_from is not set: --config.init_from=DIR" in msg
    for i, source in enumerate(_config(name, None).data.sources):
        assert f"data.sources[{i}].path {source['path']!r}" in msg
    assert "--config.data.sources='<JSON list>'" in msg


def test_set_paths_are_checked_and_the_rest_passes(tmp_path):
    c = _config("llava15_pretrain", None)
    tok = tmp_path / "tok"
    tok.mkdir()
    c.tokenizer = str(tok)
    c.init_from = str(tmp_path / "nope")
    (tmp_path / "train.json").write_text("[]")
    (tmp_path / "images").mkdir()
    c.data.sources = [{"type": "llava", "path": str(tmp_path / "train.json"),
                       "image_folder": str(tmp_path / "images"), "template": "plain"}]
    with pytest.raises(ConfigError) as e:
        check_config(c)
    msg = str(e.value)
    assert msg.startswith("config has 2 problems: ")
    assert f"tokenizer directory {str(tok)!r} has none of" in msg
    assert f"init_from directory {str(tmp_path / 'nope')!r} does not exist" in msg
    (tok / "tokenizer.json").write_text("{}")
    (tmp_path / "nope").mkdir()
    check_config(c)  # everything set and there


def test_nonexistent_tokenizer_says_so():
    c = _config("mm1_mix")
    c.tokenizer = "/nonexistent"
    with pytest.raises(ConfigError, match="tokenizer directory '/nonexistent' does not exist"):
        check_config(c)


def test_byte_tokenizer_on_a_full_size_model_is_named():
    c = _config("mm1_mix", None)
    c.tokenizer, c.init_from, c.data.sources = "byte", "", [{"type": "synthetic"}]
    with pytest.raises(ConfigError, match=r"^config has 1 problem: tokenizer='byte' .*vocab_size 32064, "
                                          r"image_token_id 32000\): --config.tokenizer=DIR"):
        check_config(c)


@pytest.mark.parametrize("key, value, message", [
    ("total_steps", -5, "total_steps=-5 must be a positive integer"),
    ("total_steps", 0, "total_steps=0 must be a positive integer"),
    ("batch_size", 0, "batch_size=0 must be a positive integer"),
    ("seq_len", -1, "seq_len=-1 must be a positive integer"),
    ("num_micro_batches", 0, "num_micro_batches=0 must be a positive integer"),
    ("optimizer.lr", 0.0, "optimizer.lr=0.0 must be > 0"),
    ("optimizer.lr", -1e-3, "optimizer.lr=-0.001 must be > 0"),
    ("optimizer.b2", 1.0, "optimizer.b2=1.0 must be in [0, 1)"),
    ("optimizer.warmup_steps", -1, "optimizer.warmup_steps=-1 must be an integer >= 0"),
    ("checkpoint.keep", 0, "checkpoint.keep=0 must be a positive integer"),
    ("evals.loss.batch_size", -2, "evals.loss: evaluator 'loss': batch_size=-2 must be an integer >= 0"),
    ("evals.mir.method", "fast", "evals.mir: evaluator 'mir': method='fast' not in"),
    ("evals.caption_4shot.shots", -4, "evals.caption_4shot: evaluator 'caption': shots=-4 must be >= 0"),
    ("evals.mir.every", -1, "evals.mir.every=-1 must be an integer >= 0 (0: at the end only)"),
    ("evals.vqq", {"every": 0}, "evals.vqq: unknown evaluator 'vqq'; known: ["),
    ("evals.pope", {"every": 0, "temperature": 2}, "evals.pope: evaluator 'pope': unknown option(s) ['temperature']"),
    ("evals.mir.images", "/nonexistent/images", "evals.mir.images '/nonexistent/images' not found: "
                                                 "--config.evals.mir.images=PATH or 'synthetic'"),
    ("model.connector.name", "mlp2x_relu", "model: unknown connector 'mlp2x_relu'"),
    ("trainable.llm", "until:99", "trainable.llm='until:99': K must be in [1, 8]"),
    ("mesh", (2, -1, -1), "mesh=(2, -1, -1) must be three sizes"),
    ("data.sources", [{"type": "synthetic", "template": "vicuna"}],
     "data.sources[0].template='vicuna' is not one of ['plain', 'vicuna_v1', 'chat', 'document']"),
    ("data.sources", [{"type": "parquet", "path": "x"}], "data.sources[0].type='parquet' is not one of"),
    ("data.sources", [{"type": "synthetic", "weight": 0}], "data.sources: no source has a positive weight"),
])
def test_impossible_values_are_one_line_before_compiling(key, value, message, tmp_path):
    c = _config("mm1_mix")
    with c.unlocked():
        *parents, leaf = key.split(".")
        node = c
        for p in parents:
            node = node[p]
        node[leaf] = value
    with pytest.raises(ConfigError) as e:
        train_and_evaluate(c, str(tmp_path))  # the trainer checks first
    assert message in str(e.value) and "\n" not in str(e.value)
    assert str(e.value).startswith("config has 1 problem: ")
    assert not os.listdir(tmp_path)  # nothing written: no checkpoint directory named -5


def test_the_list_form_of_evals_is_refused_in_one_line():
    c = _config("mm1_mix")
    with c.ignore_type():
        c.evals = [{"name": "vqa", "every": 500}]  # what config.evals was before it was a dict
    with pytest.raises(ConfigError, match=r"^config has 1 problem: evals must be a dict keyed by name, "
                                          r"\{KEY: \{\"every\": K, \*\*options\}\} .*not list$"):
        check_config(c)


def test_several_problems_in_one_message():
    c = _config("mm1_mix")
    c.total_steps, c.batch_size, c.optimizer.lr = -5, 0, 0.0
    with pytest.raises(ConfigError, match=r"^config has 3 problems: total_steps=-5 .*; batch_size=0 .*; "
                                          r"optimizer.lr=0.0 must be > 0$"):
        check_config(c)


# ----- list-valued overrides -----------------------------------------------------------------------

def test_json_list_parser():
    p = JsonListParser()
    value = '[{"type": "llava", "path": "a.json", "weight": 0.5}, {"type": "text", "path": "t.txt"}]'
    assert p.parse(value) == [{"type": "llava", "path": "a.json", "weight": 0.5},
                              {"type": "text", "path": "t.txt"}]
    assert p.parse("[{'type': 'synthetic'}]") == [{"type": "synthetic"}]  # a Python literal too
    assert p.parse([{"type": "synthetic"}]) == [{"type": "synthetic"}]  # the config's own default
    with pytest.raises(ValueError, match="is not a JSON list"):
        p.parse('[{"type": ')
    with pytest.raises(ValueError, match="is not a list"):
        p.parse('{"type": "llava"}')


def test_json_dict_parser():
    p = JsonDictParser()
    got = p.parse('{"vqa": {"every": 500, "shots": 4}, "mir": {"data": {"format": "x"}}}')
    assert got.to_dict() == {"vqa": {"every": 500, "shots": 4}, "mir": {"data": {"format": "x"}}}
    with pytest.raises(ValueError, match="is not a JSON object"):
        p.parse('{"vqa": ')
    with pytest.raises(ValueError, match="is not a JSON object; this key is a dict keyed by name"):
        p.parse('[{"name": "vqa"}]')  # the list form config.evals had


def test_evals_keys_from_the_command_line():
    """big_vision's --config.evals.NAME.KEY=VALUE, no JSON; a whole entry or the whole dict as JSON
    (entries added, the others dropped); a few-shot entry named by its key."""
    from absl import flags
    from ml_collections import config_flags

    from mir_jax.evals import build_evals
    from mir_jax.train.config_check import register_list_overrides

    register_list_overrides()

    def parse(*args):
        argv = ["train.py", f"--config={fx.ROOT}/configs/llava15_sft.py:runlocal", *args]
        fv = flags.FlagValues()
        holder = config_flags.DEFINE_config_file("config", None, "", flag_values=fv, lock_config=True,
                                                 sys_argv=argv)
        fv(argv)
        return holder.value

    c = parse("--config.evals.vqa.every=500", "--config.evals.mir.method=exact")
    assert c.evals.vqa.every == 500 and c.evals.mir.method == "exact" and c.evals.pope.every == 150
    c = parse('--config.evals.vqa={"every": 7, "shots": 2}')
    assert c.evals.vqa.to_dict() == {"every": 7, "shots": 2} and c.evals.pope.every == 150
    c = parse('--config.evals={"loss": {"every": 3}, "vqa_2shot": {"evaluator": "vqa", "shots": 2}}')
    assert sorted(c.evals) == ["loss", "vqa_2shot"]
    built = build_evals(c.evals)
    assert [(key, every, e.name, e.options["shots"] if e.name == "vqa" else None) for key, every, e in built] == [
        ("loss", 3, "loss", None), ("vqa_2shot", 0, "vqa", 2)]
    check_config(c)


# ----- too_long names the length and the key -------------------------------------------------------

def test_too_long_error_names_the_length_needed_and_the_key(tmp_path):
    """Text-only conversations of known byte lengths, seq_len 64: the byte tokenizer gives
    bos + len(system + " USER: " + q + " ASSISTANT: " + a) + eos tokens."""
    system = "S."
    rows, lengths = [], []
    for i in range(60):
        q, a = "q" * (40 + i), "a" * 10
        rows.append({"id": str(i), "conversations": [{"from": "human", "value": q},
                                                    {"from": "gpt", "value": a}]})
        lengths.append(1 + len(f"{system} USER: {q} ASSISTANT: {a}") + 1)
    path = tmp_path / "conv.json"
    path.write_text(json.dumps(rows))
    data = {"sources": [{"type": "llava", "path": str(path), "template": "vicuna_v1"}], "system": system,
            "num_threads": 1}
    it = make_train_iterator(data, image_size=32, num_image_tokens=4, batch_size=4, seq_len=64)
    with pytest.raises(BadSampleFractionError) as e:
        for _ in range(20):
            next(it)
    msg = str(e.value)
    # min_seen 50: the error comes once 50 samples are seen, every one longer than 64 tokens
    # (the shortest needs 73). The longest of any 50 of the 60 distinct lengths is at least the
    # 50th smallest and at most the largest.
    assert min(lengths) == 73
    assert "50 of 50 samples failed" in msg and "commonest reason: too_long (50 samples)" in msg
    needed = int(msg.split("the longest of them needs ")[1].split(" ")[0])
    assert needed in lengths and sorted(lengths)[49] <= needed <= max(lengths)
    assert f"but seq_len is 64: raise it (train.py: --config.seq_len={needed})" in msg


# ----- set, but not what the model needs ----------------------------------------------------------

def test_a_tokenizer_directory_that_does_not_load_is_one_line(tmp_path):
    (tmp_path / "tokenizer.json").write_text("{}")  # there, but not a tokenizer
    c = _config("mm1_mix")
    c.tokenizer = str(tmp_path)
    with pytest.raises(ConfigError, match=rf"^tokenizer '{tmp_path}' does not load \(KeyError: "):
        train_and_evaluate(c, str(tmp_path / "w"))


def test_init_from_with_other_shapes_names_the_fields(tmp_path):
    """A stage-1 directory with 2 decoder layers for a recipe that has 8."""
    from flax import nnx

    from mir_jax.models import LlavaModel
    from mir_jax.weights import hf

    c = _config("llava15_pretrain")
    other = LlavaConfig.from_dict({**c.model.to_dict(), "text": {**c.model.text.to_dict(), "num_layers": 2}})
    hf.save_pretrained(LlavaModel(other, rngs=nnx.Rngs(0)), str(tmp_path / "stage1"))
    c.init_from = str(tmp_path / "stage1")
    with pytest.raises(ConfigError) as e:
        train_and_evaluate(c, str(tmp_path / "w"))
    assert str(e.value) == f"init_from '{tmp_path / 'stage1'}' is not config.model: model.text.num_layers: 2 there, 8 here"
