"""Shared pieces of the training tests: a very small model and fixed batches of the embedded
corpus (byte tokenizer: vocab 264, image token id 3)."""

from __future__ import annotations

import dataclasses
import functools
import os

from mir_jax.models import ConnectorConfig, LlavaConfig

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

OPT = {"lr": 3e-3, "warmup_steps": 2, "end_factor": 0.1, "b1": 0.9, "b2": 0.98, "eps": 1e-8,
       "weight_decay": 0.1, "clip_norm": 1.0}
SEQ_LEN = 128


def tiny_model_config(**overrides) -> LlavaConfig:
    """`LlavaConfig.tiny()` (the library's test model) for the byte tokenizer (vocab 264, image
    token 3) with every sharded dimension even (2 heads of 16), so the model lays out on
    data=2 x fsdp=2 x tensor=2."""
    base = LlavaConfig.tiny()
    d = dict(
        vision=dataclasses.replace(base.vision, num_heads=2),
        text=dataclasses.replace(base.text, vocab_size=264, hidden_size=32, intermediate_size=64, num_heads=2),
        image_token_id=3)
    d.update(overrides)
    return base.replace(**d)


@functools.lru_cache(maxsize=4)
def batches(n: int = 6, batch_size: int = 8, seed: int = 0) -> tuple[dict, ...]:
    """n packed training batches of the embedded MM1 mixture (host NumPy)."""
    from mir_jax.data import make_train_iterator

    it = make_train_iterator({"pack": True}, image_size=32, num_image_tokens=16,
                             batch_size=batch_size, seq_len=SEQ_LEN, seed=seed)
    return tuple(next(it) for _ in range(n))


def tiny_train_config(**top):
    """A full trainer config (configs/common.py) around the tiny model, evaluation off."""
    from configs import common

    c = common.apply_runlocal(common.base_config(), ConnectorConfig(name="mlp2x_gelu"))
    c.model = tiny_model_config().to_dict()
    c.init_from, c.init_parts, c.tokenizer = "", "all", "byte"  # random weights, byte tokens
    c.total_steps = 6
    c.batch_size = 8
    c.seq_len = SEQ_LEN
    c.log_every = 1
    c.checkpoint.every = 3
    c.checkpoint.async_save = False
    c.evals = {}
    c.trainable.llm = "all"
    c.data.num_threads = 1
    for k, v in top.items():
        c[k] = v
    return c
