"""LLaVA-style vision-language models in Flax NNX (see `llava.LlavaModel`)."""

from mir_jax.models.config import ConnectorConfig, LlavaConfig, TextConfig, VisionConfig
from mir_jax.models.connectors import Connector
from mir_jax.models.generate import generate, init_cache
from mir_jax.models.llama import LlamaModel
from mir_jax.models.llava import (
    LlavaModel,
    LlavaOutput,
    expand_image_tokens,
    flops_per_token,
    image_flops,
    with_compute_dtype,
)
from mir_jax.models.moca import MoCa
from mir_jax.models.vision import VisionTower

__all__ = [
    "Connector",
    "ConnectorConfig",
    "LlamaModel",
    "LlavaConfig",
    "LlavaModel",
    "LlavaOutput",
    "MoCa",
    "TextConfig",
    "VisionConfig",
    "VisionTower",
    "expand_image_tokens",
    "generate",
    "init_cache",
    "flops_per_token",
    "image_flops",
    "with_compute_dtype",
]
