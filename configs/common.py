"""Shared config pieces. Configs are Python (big_vision style): `get_config(arg)` returns an
ml_collections ConfigDict; `arg` is a comma list of options, e.g. "runlocal" or
"runlocal,moca". Every key can be overridden from the command line
(`--config.optimizer.lr=3e-4`); an unknown key is an error.

Top-level keys (all read by `mir_jax.train.loop`):
  seed, total_steps, batch_size (global), num_micro_batches, seq_len, z_loss, max_bad_steps,
  log_every, peak_flops (0 = from the device kind), init_from (HF/original LLaVA checkpoint dir,
  a training workdir or WORKDIR@STEP, or "" for random weights), init_parts ("all" or a comma
  list of vision, connector, llm: the parts taken from init_from, the rest fresh;
  `mir_jax.weights.parts`), tokenizer ("byte" or an HF tokenizer dir), image_mean, image_std,
  mesh: (data, fsdp, tensor), one entry may be -1 (= the remaining devices),
  model: `LlavaConfig` fields (vision, connector, text, ..., dtype, remat, scan_layers),
  data: the data config of `mir_jax.data.mixture` (sources, pack, ...),
  trainable: {connector, vision: none|all|from:K, llm: none|all|until:K, moca} (see mir_jax/models/partition.py),
  optimizer: {lr, warmup_steps, end_factor, b1, b2, eps, weight_decay, clip_norm},
  checkpoint: {every, keep, async_save},
  evals: every evaluation of the run, a dict keyed by name (big_vision's config.evals.NAME.KEY):
         {KEY: {every (0: at the end only; every entry also runs at the end), evaluator (default:
         KEY), **options}}, the evaluator's options (`mir_jax.evals`); KEY names the results
         ("caption_4shot/cider"). The recipes ask for the held-out loss ("loss": num_samples,
         batch_size, seq_len; the run's held-out split, config.data with config.seed) and MIR
         ("mir": num_samples, images, texts, method, batch_size, seq_len), each on a fixed set
         built before the first step (batch_size 0 = 16 rounded up to a multiple of the
         data-parallel shards, `mir_jax.sharding.eval_batch_rows`; seq_len 0 = config.seq_len),
         written to metrics.jsonl rows of split "eval"; the :runlocal ones add "sample_captions"
         (a few greedy captions, printed) and the embedded benchmark's evaluators (rows of split
         "downstream"). One key: `--config.evals.mir.every=500`; the whole dict (entries added or
         dropped) as JSON: `--config.evals='{"vqa": {"every": 500, "shots": 4}}'`.

The full-size recipes leave `tokenizer` and `init_from` unset (`required()`): they are paths on
the user's machine. `mir_jax.train.config_check.check_config` (run by the trainer before anything
heavy) lists every unset key, impossible value and missing data file in one message.
List-valued keys take a JSON list on the command line: `--config.data.sources='[{...}, ...]'`,
dict-valued ones a JSON object.
"""

from __future__ import annotations

import ml_collections

from mir_jax.data import CLIP_MEAN, CLIP_STD
from mir_jax.data.miniature import BASE_DIR as MINIATURE_BASE
from mir_jax.data.mixture import DEFAULTS as DATA_DEFAULTS
from mir_jax.models import ConnectorConfig, LlavaConfig, TextConfig, VisionConfig
from mir_jax.models.partition import RECIPE_DEFAULTS
from mir_jax.train.config_check import required


def parse_arg(arg: str | None, known=("runlocal",)) -> set[str]:
    opts = {a.strip() for a in (arg or "").split(",") if a.strip()}
    unknown = opts - set(known)
    if unknown:
        raise ValueError(f"unknown config option(s) {sorted(unknown)}; known: {list(known)}")
    return opts


def llava15_7b_model(connector: ConnectorConfig, *, moca: bool = False) -> dict:
    """CLIP ViT-L/14-336 + Vicuna-7B (LLaVA-1.5-7B's shapes), bf16 compute, remat."""
    cfg = LlavaConfig(
        vision=VisionConfig(kind="clip", image_size=336, patch_size=14, hidden_size=1024,
                            intermediate_size=4096, num_layers=24, num_heads=16),
        connector=connector,
        text=TextConfig(vocab_size=32064, hidden_size=4096, intermediate_size=11008, num_layers=32,
                        num_heads=32, num_kv_heads=32, max_position_embeddings=4096),
        image_token_id=32000, pad_token_id=0, eos_token_id=2, moca=moca,
        dtype="bfloat16", remat="dots_no_batch")
    return cfg.to_dict()


def miniature_model(connector: ConnectorConfig, *, moca: bool = False) -> dict:
    """The miniature LLaVA of every `:runlocal` recipe (1.97M parameters with mlp2x_gelu): a
    2-layer CLIP-style ViT on 32x32 images (16 patches of 8 px) and an 8-layer decoder 128 wide
    over the miniature BPE vocabulary (627 tokens, padded to 632; image id 3). Its vision tower
    and LLM are the shipped base, `MINIATURE_BASE` (`configs/stage0.py` trains it; depth, not
    width, is what let the LLM answer existence questions: docs/miniature_world.md)."""
    cfg = LlavaConfig(
        vision=VisionConfig(kind="clip", image_size=32, patch_size=8, hidden_size=64,
                            intermediate_size=128, num_layers=2, num_heads=4),
        connector=connector,
        text=TextConfig(vocab_size=632, hidden_size=128, intermediate_size=384, num_layers=8,
                        num_heads=4, num_kv_heads=4, max_position_embeddings=1024),
        image_token_id=3, pad_token_id=0, eos_token_id=2, moca=moca, dtype="float32",
        remat="none")
    return cfg.to_dict()


def tiny_model(connector: ConnectorConfig, *, moca: bool = False) -> dict:
    """A ~0.7M-parameter model with the byte tokenizer (vocab 264, image id 3), for tests: the
    miniature model with a 3-layer decoder (2 key/value heads).

    Context 1,024: a 4-shot caption prompt of byte-tokenized captions (~430 tokens) plus a
    caption's budget (up to ~90 new tokens) passes 512; RoPE positions cost no parameters."""
    cfg = miniature_model(connector, moca=moca)
    cfg["text"] = {**cfg["text"], "vocab_size": 264, "num_layers": 3, "num_kv_heads": 2}
    return cfg


def data_config(**values) -> ml_collections.ConfigDict:
    """The data config with every key of `mir_jax.data.mixture.DEFAULTS` (the one place the
    defaults live), so each can be overridden from the command line: keys whose default is
    None become typed placeholders; eval_sources (a list, default: the sources) stays absent."""
    c = ml_collections.ConfigDict()
    for key, value in DATA_DEFAULTS.items():
        if value is not None:
            c[key] = value
        elif key in _DATA_PLACEHOLDERS:
            c[key] = ml_collections.config_dict.placeholder(_DATA_PLACEHOLDERS[key])
    c.sources = []
    c.update(values)
    return c


_DATA_PLACEHOLDERS = {"system": str, "max_images": int}


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_steps = 1000
    c.batch_size = 256
    c.num_micro_batches = 1
    c.seq_len = 2048
    c.z_loss = 0.0
    c.max_bad_steps = 20
    c.log_every = 50
    c.peak_flops = 0.0
    c.init_from = required()  # e.g. a stage-1 checkpoint (mir_jax.weights.hf.build_stage1)
    c.init_parts = "all"
    c.tokenizer = required()  # the LLM's Hugging Face tokenizer directory
    c.image_mean = CLIP_MEAN
    c.image_std = CLIP_STD
    c.mesh = (-1, 1, 1)
    c.model = {}
    c.data = data_config()
    c.trainable = ml_collections.ConfigDict(dict(RECIPE_DEFAULTS))  # the defaults live in partition
    c.optimizer = ml_collections.ConfigDict({
        "lr": 1e-3, "warmup_steps": 0, "end_factor": 0.0, "b1": 0.9, "b2": 0.999, "eps": 1e-8,
        "weight_decay": 0.0, "clip_norm": 1.0})
    c.checkpoint = ml_collections.ConfigDict({"every": 1000, "keep": 3, "async_save": True})
    c.evals = ml_collections.ConfigDict(held_out_evals(runlocal=False))
    return c


def held_out_evals(runlocal: bool, every: int | None = None) -> dict[str, dict]:
    """The held-out loss and MIR entries of `config.evals` every recipe has, full size or
    :runlocal, every `every` steps (0: at the end only; default 1000 full size, 100 runlocal)."""
    if every is None:
        every = 100 if runlocal else 1000
    if runlocal:
        return {"loss": {"every": every, "num_samples": 64, "batch_size": 16, "seq_len": 0},
                "mir": {"every": every, "num_samples": 32, "images": "synthetic", "texts": "synthetic",
                        "method": "auto", "batch_size": 16, "seq_len": 0}}
    return {"loss": {"every": every, "num_samples": 256, "batch_size": 0, "seq_len": 0},
            "mir": {"every": every, "num_samples": 100, "images": "synthetic", "texts": "synthetic",
                    "method": "auto", "batch_size": 0, "seq_len": 0}}


def held_out_every(c: ml_collections.ConfigDict, every: int) -> None:
    """The held-out loss and MIR every `every` steps (and at the end)."""
    for key in held_out_evals(False):
        c.evals[key].every = every


def runlocal_evals(stage: str, every: int = 150, num_samples: int = 48) -> dict[str, dict]:
    """The embedded benchmark in the loop of a runlocal recipe (entries of `config.evals`):
    captioning (0- and 4-shot) after pre-training; captioning, VQA, POPE and multiple choice
    after instruction tuning."""
    if stage == "pretrain":
        entries = {"caption": {}, "caption_4shot": {"evaluator": "caption", "shots": 4}}
    else:
        entries = {"caption": {}, "vqa": {}, "pope": {}, "multiple_choice": {}}
    return {key: {"every": every, "num_samples": num_samples, **o} for key, o in entries.items()}


def apply_runlocal(c: ml_collections.ConfigDict, connector: ConnectorConfig, *, moca: bool = False,
                   sources=None) -> ml_collections.ConfigDict:
    """The CPU recipe: the miniature model on the embedded corpus, a few hundred steps (minutes
    on 2 cores), starting from the shipped base's vision tower and LLM under a fresh connector
    (LLaVA's stage-1 start; `configs/stage0.py`, which trains that base, starts from nothing)."""
    c.model = miniature_model(connector, moca=moca)
    c.init_from = MINIATURE_BASE
    c.init_parts = "vision,llm"
    c.tokenizer = MINIATURE_BASE
    c.total_steps = 300
    c.batch_size = 16
    c.seq_len = 128
    c.log_every = 10
    c.data = data_config(sources=sources or [], pack=True)
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 20
    c.optimizer.end_factor = 0.1
    c.optimizer.b2 = 0.98
    c.optimizer.weight_decay = 0.01
    c.checkpoint.every = 100
    c.checkpoint.keep = 2
    c.evals.update(held_out_evals(runlocal=True))
    c.evals.sample_captions = {"every": 0, "num_samples": 3}
    c.mesh = (-1, 1, 1)
    return c
