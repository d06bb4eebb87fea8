"""Configuration dataclasses for the LLaVA-style model.

Everything is a plain dataclass of plain values so that a config can live inside an
``ml_collections.ConfigDict`` (``LlavaConfig.from_dict(cfg.to_dict())``) and be written to JSON.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import jax.numpy as jnp

# Attention implementations ("auto" picks by backend and length; see mir_jax.models.attention).
from mir_jax.models.attention import IMPLEMENTATIONS as ATTENTION_IMPLEMENTATIONS

VISION_KINDS = ("clip", "siglip")
# Connector names: these, or "mlp{n}x_gelu" (kind "mlp").
FIXED_CONNECTORS = ("linear", "avgpool", "attnpool", "c_abstractor")
REMAT_POLICIES = ("none", "full", "dots", "dots_no_batch")


def _from_dict(cls, d: dict[str, Any] | Any):
    """Builds dataclass `cls` from a dict, rejecting unknown keys with their names."""
    if isinstance(d, cls):
        return d
    if not isinstance(d, dict):
        d = dict(d)  # ml_collections ConfigDict and other mappings
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ValueError(f"{cls.__name__}: unknown config keys {unknown}; known: {sorted(names)}")
    kwargs = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
    return cls(**kwargs)


@dataclass(frozen=True)
class VisionConfig:
    """A ViT image encoder: CLIP (class token, pre-LayerNorm, quick_gelu) or SigLIP
    (no class token, patch bias, gelu_tanh, post-LayerNorm)."""

    kind: str = "clip"
    image_size: int = 336
    patch_size: int = 14
    num_channels: int = 3
    hidden_size: int = 1024
    intermediate_size: int = 4096
    num_layers: int = 24
    num_heads: int = 16
    layer_norm_eps: float = 1e-5
    hidden_act: str = "quick_gelu"

    def __post_init__(self):
        if self.kind not in VISION_KINDS:
            raise ValueError(f"vision kind {self.kind!r} not in {VISION_KINDS}")
        if self.image_size % self.patch_size:
            raise ValueError(f"image_size {self.image_size} not divisible by patch_size {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"vision hidden_size {self.hidden_size} not divisible by {self.num_heads} heads")

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @property
    def num_patches(self) -> int:
        return self.grid**2

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads


@dataclass(frozen=True)
class ConnectorConfig:
    """Vision-to-language connector, [B, P, D_vis] -> [B, K, D_llm].

    name: "linear", "mlp{n}x_gelu" (LLaVA-1.5: "mlp2x_gelu"), "avgpool", "attnpool",
    "c_abstractor". num_tokens (K) is used by the pooling connectors (must be a square for
    avgpool / c_abstractor); linear and MLP connectors keep one token per patch.
    """

    name: str = "mlp2x_gelu"
    num_tokens: int | None = None
    bias: bool = True
    hidden_act: str = "gelu"  # the MLP connector's activation (HF `projector_hidden_act`)
    num_heads: int = 8  # attnpool
    depth: int = 3  # c_abstractor: residual blocks before and after pooling
    hidden_size: int | None = None  # c_abstractor width (default: vision width)

    def __post_init__(self):
        _ = self.kind  # validates the name

    @property
    def kind(self) -> str:
        if self.name in FIXED_CONNECTORS:
            return self.name
        if self.name.startswith("mlp") and self.name.endswith("x_gelu"):
            _ = self.mlp_depth  # validates
            return "mlp"
        raise ValueError(
            f"unknown connector {self.name!r}; expected mlp{{n}}x_gelu or one of {FIXED_CONNECTORS}")

    @property
    def mlp_depth(self) -> int:
        try:
            n = int(self.name[len("mlp"): -len("x_gelu")])
        except ValueError:
            raise ValueError(f"bad MLP connector name {self.name!r} (want e.g. 'mlp2x_gelu')") from None
        if n < 1:
            raise ValueError(f"bad MLP connector depth in {self.name!r}")
        return n


@dataclass(frozen=True)
class TextConfig:
    """Llama-family decoder (Llama, Vicuna, Mistral without sliding window, Qwen2 with qkv_bias)."""

    vocab_size: int = 32064
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_layers: int = 32
    num_heads: int = 32
    num_kv_heads: int = 32
    head_dim: int | None = None
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    qkv_bias: bool = False
    o_bias: bool = False
    mlp_bias: bool = False
    tie_word_embeddings: bool = False
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096

    def __post_init__(self):
        if self.head_dim is None:
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_heads)
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads {self.num_heads} not a multiple of num_kv_heads {self.num_kv_heads}")


@dataclass(frozen=True)
class LlavaConfig:
    """The whole model. `vision_feature_layer` indexes the vision tower's L+1 hidden states as
    HF does (-2 = penultimate layer); a tuple concatenates several layers. Strategy "default"
    drops the first token (CLIP's class token), "full" keeps all (LLaVA's "patch" / "cls_patch")."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    connector: ConnectorConfig = field(default_factory=ConnectorConfig)
    text: TextConfig = field(default_factory=TextConfig)
    image_token_id: int = 32000
    pad_token_id: int = 0
    eos_token_id: int = 2
    vision_feature_layer: int | tuple[int, ...] = -2
    vision_feature_select_strategy: str = "default"
    moca: bool = False  # Modality Calibration after every decoder layer (MIR paper)
    moca_std: float = 0.0
    dtype: str = "float32"  # compute dtype; parameters are always float32
    remat: str = "none"
    scan_layers: bool = True
    attention: str = "auto"  # one of ATTENTION_IMPLEMENTATIONS, for every attention in the model

    def __post_init__(self):
        set_ = lambda k, v: object.__setattr__(self, k, v)  # frozen: hashable for jit
        set_("vision", _from_dict(VisionConfig, self.vision))
        set_("connector", _from_dict(ConnectorConfig, self.connector))
        set_("text", _from_dict(TextConfig, self.text))
        if isinstance(self.vision_feature_layer, list):
            set_("vision_feature_layer", tuple(self.vision_feature_layer))
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(
                f"vision_feature_select_strategy {self.vision_feature_select_strategy!r} not in "
                "('default', 'full')"
            )
        if self.remat not in REMAT_POLICIES:
            raise ValueError(f"remat {self.remat!r} not in {REMAT_POLICIES}")
        if self.attention not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"attention {self.attention!r} not in {ATTENTION_IMPLEMENTATIONS}")
        for layer in self.feature_layers:
            if not -(self.vision.num_layers + 1) <= layer <= self.vision.num_layers:
                raise ValueError(
                    f"vision_feature_layer {layer} out of range for {self.vision.num_layers} layers"
                )
        jnp.dtype(self.dtype)  # validates
        if self.connector.kind in ("avgpool", "c_abstractor"):
            if self.num_vision_tokens != self.vision.num_patches:
                raise ValueError(
                    f"connector {self.connector.name} pools a square patch grid; the vision features "
                    f"have {self.num_vision_tokens} tokens (use strategy 'default' with CLIP)"
                )
            k = self.connector.num_tokens
            if k is None or math.isqrt(k) ** 2 != k:
                raise ValueError(f"connector {self.connector.name} needs a square num_tokens, got {k}")
        if self.connector.kind == "attnpool" and not self.connector.num_tokens:
            raise ValueError("connector attnpool needs num_tokens")

    # --- derived values ---------------------------------------------------------------------
    @property
    def feature_layers(self) -> tuple[int, ...]:
        v = self.vision_feature_layer
        return (v,) if isinstance(v, int) else tuple(v)

    @property
    def num_vision_tokens(self) -> int:
        """Tokens per image out of the vision tower (after the select strategy)."""
        n = self.vision.num_patches + (1 if self.vision.kind == "clip" else 0)
        return n - 1 if self.vision_feature_select_strategy == "default" else n

    @property
    def num_image_tokens(self) -> int:
        """K: how many LLM positions one image occupies."""
        if self.connector.kind in ("linear", "mlp"):
            return self.num_vision_tokens
        return int(self.connector.num_tokens)

    @property
    def compute_dtype(self):
        return jnp.dtype(self.dtype)

    # --- (de)serialization ------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LlavaConfig:
        return _from_dict(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self, **kw) -> LlavaConfig:
        return dataclasses.replace(self, **kw)

    @classmethod
    def tiny(cls, **overrides) -> LlavaConfig:
        """A few-hundred-thousand-parameter model for tests and CPU runs (K = 16 image tokens)."""
        base = dict(
            vision=VisionConfig(kind="clip", image_size=32, patch_size=8, hidden_size=32,
                                intermediate_size=64, num_layers=2, num_heads=4),
            connector=ConnectorConfig(name="mlp2x_gelu"),
            text=TextConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_layers=2,
                            num_heads=4, num_kv_heads=2, max_position_embeddings=512),
            image_token_id=127,
            pad_token_id=0,
            eos_token_id=2,
        )
        base.update(overrides)
        return cls.from_dict(base)
