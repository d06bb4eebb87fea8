"""Hugging Face interop: load and save LLaVA checkpoints as NumPy (no torch at run time).

Reads HF `LlavaForConditionalGeneration` directories (every key prefix in use), the original
LLaVA repository's layout (MoCa included), and stage-1 starts (a CLIP / SigLIP tower + a
Llama-family LM + a fresh connector: `build_stage1`). `_param_table` maps canonical HF names to
our parameters; `save_pretrained` writes the installed transformers' own layout.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import math
import os
import re
import shutil
import struct

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mir_jax.data.images import resolve_vision_tower
from mir_jax.models.config import ConnectorConfig, LlavaConfig, TextConfig, VisionConfig
from mir_jax.models.connectors import Connector
from mir_jax.models.layers import make_stack
from mir_jax.models.llava import LlavaModel
from mir_jax.models.moca import MoCa

IMAGE_TOKEN_INDEX_ORIGINAL = -200  # the original LLaVA repo's placeholder id (not in the vocab)

# ==============================================================================================
# safetensors as NumPy
# ==============================================================================================
_ST_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
              "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_}


def _st_dtype(name: str, file: str, key: str):
    if name == "BF16":
        import ml_dtypes

        return ml_dtypes.bfloat16
    try:
        return _ST_DTYPES[name]
    except KeyError:
        raise ValueError(f"{file}: tensor {key!r} has unsupported dtype {name}") from None


@dataclasses.dataclass
class TensorRef:
    file: str
    key: str
    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int

    def load(self) -> np.ndarray:
        arr = np.memmap(self.file, dtype=np.uint8, mode="r", offset=self.start, shape=(self.end - self.start,))
        return np.asarray(arr).view(_st_dtype(self.dtype, self.file, self.key)).reshape(self.shape)


def _read_header(file: str) -> dict[str, TensorRef]:
    with open(file, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    base = 8 + n
    out = {}
    for key, info in header.items():
        if key == "__metadata__":
            continue
        s, e = info["data_offsets"]
        out[key] = TensorRef(file, key, info["dtype"], tuple(info["shape"]), base + s, base + e)
    return out


def index_safetensors(path: str) -> dict[str, TensorRef]:
    """Every tensor of a checkpoint directory (or single file), by key, without reading data."""
    if os.path.isfile(path):
        files = [path]
    else:
        if not os.path.isdir(path):
            raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
        idx = os.path.join(path, "model.safetensors.index.json")
        if os.path.exists(idx):
            with open(idx) as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted({os.path.join(path, v) for v in weight_map.values()})
            for fl in files:
                if not os.path.exists(fl):
                    raise FileNotFoundError(f"{idx} names shard {fl!r}, which is missing")
        else:
            files = sorted(glob.glob(os.path.join(path, "*.safetensors")))
        if not files:
            found = sorted(os.listdir(path))
            raise FileNotFoundError(
                f"no *.safetensors in {path!r} (found {found}); convert .bin checkpoints to "
                "safetensors first")
    refs: dict[str, TensorRef] = {}
    for fl in files:
        for k, r in _read_header(fl).items():
            if k in refs:
                raise ValueError(f"tensor {k!r} appears in both {refs[k].file} and {fl}")
            refs[k] = r
    return refs


def _read_json(path: str, name: str = "config.json") -> dict:
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint directory {path!r} does not exist")
    file = os.path.join(path, name) if os.path.isdir(path) else path
    if not os.path.exists(file):
        raise FileNotFoundError(f"{file} not found")
    with open(file) as f:
        return json.load(f)


# ==============================================================================================
# Configs
# ==============================================================================================
def vision_config_from_hf(d: dict) -> VisionConfig:
    mt = d.get("model_type", "")
    if mt in ("clip", "siglip"):  # a full CLIP/SigLIP model: take its vision half
        d = d["vision_config"]
        mt = d.get("model_type", mt + "_vision_model")
    kind = {"clip_vision_model": "clip", "siglip_vision_model": "siglip"}.get(mt)
    if kind is None:
        raise ValueError(f"unsupported vision tower model_type {mt!r} (want clip_vision_model or siglip_vision_model)")
    return VisionConfig(
        kind=kind, image_size=d.get("image_size", 224), patch_size=d.get("patch_size", 32 if kind == "clip" else 16),
        num_channels=d.get("num_channels", 3), hidden_size=d.get("hidden_size", 768),
        intermediate_size=d.get("intermediate_size", 3072), num_layers=d.get("num_hidden_layers", 12),
        num_heads=d.get("num_attention_heads", 12),
        layer_norm_eps=d.get("layer_norm_eps", 1e-5 if kind == "clip" else 1e-6),
        hidden_act=d.get("hidden_act", "quick_gelu" if kind == "clip" else "gelu_pytorch_tanh"))


def text_config_from_hf(d: dict) -> TextConfig:
    mt = d.get("model_type", "llama")
    if mt not in ("llama", "qwen2", "mistral"):
        raise ValueError(f"unsupported language model_type {mt!r} (llama, qwen2, mistral)")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    if rope_type != "default":
        raise ValueError(f"rope_type {rope_type!r} is not supported (only 'default')")
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    heads = d["num_attention_heads"]
    bias = bool(d.get("attention_bias", False))
    return TextConfig(
        vocab_size=d["vocab_size"], hidden_size=d["hidden_size"], intermediate_size=d["intermediate_size"],
        num_layers=d["num_hidden_layers"], num_heads=heads, num_kv_heads=d.get("num_key_value_heads") or heads,
        head_dim=d.get("head_dim") or d["hidden_size"] // heads, rms_norm_eps=d.get("rms_norm_eps", 1e-6),
        rope_theta=float(theta), qkv_bias=True if mt == "qwen2" else bias, o_bias=False if mt == "qwen2" else bias,
        mlp_bias=bool(d.get("mlp_bias", False)), tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
        hidden_act=d.get("hidden_act", "silu"), max_position_embeddings=d.get("max_position_embeddings", 4096))


def _first(x, default):
    if isinstance(x, (list, tuple)):
        return x[0] if x else default
    return default if x is None else x


def config_from_hf(d: dict, **overrides) -> LlavaConfig:
    """LlavaConfig from an HF `LlavaForConditionalGeneration` config.json dict."""
    tc = dict(d["text_config"])
    if "tie_word_embeddings" in d and "tie_word_embeddings" not in tc:
        tc["tie_word_embeddings"] = d["tie_word_embeddings"]
    if d.get("tie_word_embeddings"):
        tc["tie_word_embeddings"] = True
    text = text_config_from_hf(tc)
    act = d.get("projector_hidden_act", "gelu")
    kw = dict(
        vision=vision_config_from_hf(d["vision_config"]),
        connector=ConnectorConfig(name="mlp2x_gelu", bias=d.get("multimodal_projector_bias", True), hidden_act=act),
        text=text,
        image_token_id=d.get("image_token_index", d.get("image_token_id", 32000)),
        pad_token_id=_first(tc.get("pad_token_id", d.get("pad_token_id")), 0),
        eos_token_id=_first(tc.get("eos_token_id", d.get("eos_token_id")), 2),
        vision_feature_layer=d.get("vision_feature_layer", -2),
        vision_feature_select_strategy=d.get("vision_feature_select_strategy", "default"),
    )
    kw.update(overrides)
    return LlavaConfig(**kw)


def _vision_to_hf(v: VisionConfig) -> dict:
    d = dict(hidden_size=v.hidden_size, intermediate_size=v.intermediate_size, num_hidden_layers=v.num_layers,
             num_attention_heads=v.num_heads, num_channels=v.num_channels, image_size=v.image_size,
             patch_size=v.patch_size, hidden_act=v.hidden_act, layer_norm_eps=v.layer_norm_eps)
    if v.kind == "clip":
        d["model_type"] = "clip_vision_model"
    else:
        # LLaVA never uses SigLIP's attention-pooling head; we do not keep it.
        d.update(model_type="siglip_vision_model", vision_use_head=False)
    return d


def _text_to_hf(t: TextConfig, cfg: LlavaConfig) -> dict:
    if t.qkv_bias and not t.o_bias:
        mt, extra = "qwen2", {"use_sliding_window": False}
    elif t.qkv_bias != t.o_bias:
        raise ValueError("o_bias without qkv_bias has no HF equivalent")
    else:
        mt, extra = "llama", {"attention_bias": t.qkv_bias, "mlp_bias": t.mlp_bias}
    return dict(model_type=mt, vocab_size=t.vocab_size, hidden_size=t.hidden_size,
                intermediate_size=t.intermediate_size, num_hidden_layers=t.num_layers,
                num_attention_heads=t.num_heads, num_key_value_heads=t.num_kv_heads, head_dim=t.head_dim,
                rms_norm_eps=t.rms_norm_eps, rope_parameters={"rope_theta": t.rope_theta, "rope_type": "default"},
                rope_theta=t.rope_theta, hidden_act=t.hidden_act, max_position_embeddings=t.max_position_embeddings,
                tie_word_embeddings=t.tie_word_embeddings, pad_token_id=cfg.pad_token_id,
                eos_token_id=cfg.eos_token_id, **extra)


def config_to_hf(cfg: LlavaConfig) -> dict:
    """HF `LlavaForConditionalGeneration` config.json dict; raises for what HF cannot express."""
    if cfg.connector.kind != "mlp" or cfg.connector.mlp_depth != 2:
        raise ValueError(f"HF LLaVA only has the mlp2x_gelu projector; connector {cfg.connector.name!r} "
                         "cannot be saved in its format")
    if cfg.moca:
        raise ValueError("HF LlavaForConditionalGeneration has no MoCa; save with moca disabled "
                         "(or use the original-LLaVA layout)")
    if not 0 <= cfg.image_token_id < cfg.text.vocab_size:
        raise ValueError(f"image_token_id {cfg.image_token_id} must be inside the vocabulary "
                         f"({cfg.text.vocab_size}) for HF LLaVA; see build_stage1(add_image_token=True)")
    return {
        "architectures": ["LlavaForConditionalGeneration"], "model_type": "llava",
        "vision_config": _vision_to_hf(cfg.vision), "text_config": _text_to_hf(cfg.text, cfg),
        "image_token_index": cfg.image_token_id, "image_seq_length": cfg.num_image_tokens,
        "projector_hidden_act": cfg.connector.hidden_act, "multimodal_projector_bias": cfg.connector.bias,
        "vision_feature_layer": (cfg.vision_feature_layer if isinstance(cfg.vision_feature_layer, int)
                                 else list(cfg.vision_feature_layer)),
        "vision_feature_select_strategy": cfg.vision_feature_select_strategy,
        "tie_word_embeddings": cfg.text.tie_word_embeddings, "dtype": "float32",
    }


# ==============================================================================================
# The parameter table: canonical HF name -> (our path, kind)
#   kinds: linear (HF [out, in] -> kernel [*in, *out]), conv (HF [D, C, p, p] -> [p, p, C, D]),
#          head (lm_head [V, D] -> [D, V]), bias (flat in HF), copy (same values and shape).
# "{i}" marks a stacked layer index (our leading "layers" axis).
# ==============================================================================================
def _param_table(cfg: LlavaConfig) -> dict[str, tuple[tuple, str]]:
    t: dict[str, tuple[tuple, str]] = {}

    def lin(hf, ours, bias=True):
        t[f"{hf}.weight"] = ((*ours, "kernel"), "linear")
        if bias:
            t[f"{hf}.bias"] = ((*ours, "bias"), "bias")

    def norm(hf, ours, bias=True):
        t[f"{hf}.weight"] = ((*ours, "scale"), "copy")
        if bias:
            t[f"{hf}.bias"] = ((*ours, "bias"), "copy")

    v = ("vision_tower",)
    t["vision.embeddings.patch_embedding.weight"] = ((*v, "patch_embedding", "kernel"), "conv")
    if cfg.vision.kind == "siglip":
        t["vision.embeddings.patch_embedding.bias"] = ((*v, "patch_embedding", "bias"), "copy")
    else:
        t["vision.embeddings.class_embedding"] = ((*v, "class_embedding"), "copy")
        norm("vision.pre_layrnorm", (*v, "pre_layrnorm"))
    t["vision.embeddings.position_embedding.weight"] = ((*v, "position_embedding"), "copy")
    norm("vision.post_layernorm", (*v, "post_layernorm"))
    vl = (*v, "layers")
    for n in ("layer_norm1", "layer_norm2"):
        norm(f"vision.encoder.layers.{{i}}.{n}", (*vl, n))
    for n in ("q_proj", "k_proj", "v_proj", "out_proj"):
        lin(f"vision.encoder.layers.{{i}}.self_attn.{n}", (*vl, "self_attn", n))
    for n in ("fc1", "fc2"):
        lin(f"vision.encoder.layers.{{i}}.mlp.{n}", (*vl, "mlp", n))

    c = ("connector", "impl")
    kind = cfg.connector.kind
    if kind == "mlp":
        for j in range(cfg.connector.mlp_depth):
            lin(f"projector.linear_{j + 1}", (*c, "layers", j), cfg.connector.bias)
    elif kind == "linear":
        lin("projector.proj", (*c, "proj"), cfg.connector.bias)
    # The pooling connectors have no HF counterpart; they are never read from a checkpoint.

    tx, tc = ("language_model",), cfg.text
    t["lm.embed_tokens.weight"] = ((*tx, "embed_tokens"), "copy")
    norm("lm.norm", (*tx, "norm"), bias=False)
    ll = (*tx, "layers")
    norm("lm.layers.{i}.input_layernorm", (*ll, "input_layernorm"), bias=False)
    norm("lm.layers.{i}.post_attention_layernorm", (*ll, "post_attention_layernorm"), bias=False)
    for n in ("q_proj", "k_proj", "v_proj"):
        lin(f"lm.layers.{{i}}.self_attn.{n}", (*ll, "self_attn", n), tc.qkv_bias)
    lin("lm.layers.{i}.self_attn.o_proj", (*ll, "self_attn", "o_proj"), tc.o_bias)
    for n in ("gate_proj", "up_proj", "down_proj"):
        lin(f"lm.layers.{{i}}.mlp.{n}", (*ll, "mlp", n), tc.mlp_bias)
    if cfg.moca:
        t["lm.layers.{i}.modality_layernorm.scale"] = ((*ll, "moca", "scale"), "copy")
        t["lm.layers.{i}.modality_layernorm.shift"] = ((*ll, "moca", "shift"), "copy")
    if not tc.tie_word_embeddings:
        t["lm_head.weight"] = ((*tx, "lm_head"), "head")
    return t


# Checkpoint keys that are known and deliberately not used.
_IGNORED = [
    r"^vision\.head\.",  # SigLIP attention-pooling head (LLaVA reads hidden states, not the head)
    r"^lm\.rotary_emb\.inv_freq$", r"^lm\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq$",
    r"^vision\.embeddings\.position_ids$",
    # The text half of full CLIP/SigLIP directories.
    r"^(text_model\.|logit_scale|logit_bias|text_projection|visual_projection)",
]

# Key prefix -> canonical prefix, longest first, per layout.
_PREFIXES = {
    "llava_hf": [
        ("model.vision_tower.vision_model.", "vision."), ("model.vision_tower.", "vision."),
        ("vision_tower.vision_model.", "vision."), ("vision_tower.", "vision."),
        ("model.multi_modal_projector.", "projector."), ("multi_modal_projector.", "projector."),
        ("model.language_model.", "lm."), ("language_model.model.", "lm."),
        ("language_model.lm_head.", "lm_head."), ("lm_head.", "lm_head."),
    ],
    "llava_original": [
        ("model.vision_tower.vision_tower.vision_model.", "vision."),
        ("model.mm_projector.", "projector.mm."), ("model.", "lm."), ("lm_head.", "lm_head."),
    ],
    "vision": [("vision_model.", "vision."), ("", "vision.")],
    "lm": [("model.", "lm."), ("lm_head.", "lm_head.")],
}


def _canonical(key: str, layout: str, cfg: LlavaConfig) -> str | None:
    for prefix, repl in _PREFIXES[layout]:
        if key.startswith(prefix):
            name = repl + key[len(prefix):]
            break
    else:
        return None
    if name.startswith("projector.mm."):  # original LLaVA: nn.Sequential indices
        rest = name[len("projector.mm."):]
        m = re.fullmatch(r"(\d+)\.(weight|bias)", rest)
        if cfg.connector.kind == "mlp" and m and int(m.group(1)) % 2 == 0:
            name = f"projector.linear_{int(m.group(1)) // 2 + 1}.{m.group(2)}"
        elif cfg.connector.kind == "linear" and rest in ("weight", "bias"):
            name = f"projector.proj.{rest}"
    return name


def _to_ours(arr: np.ndarray, kind: str, shape: tuple[int, ...]) -> np.ndarray:
    if kind == "linear":
        arr = arr.T
    elif kind == "conv":
        arr = arr.transpose(2, 3, 1, 0)
    elif kind == "head":
        arr = arr.T
    if math.prod(arr.shape) != math.prod(shape):
        raise ValueError(f"shape {arr.shape} does not fit parameter shape {shape}")
    return arr.reshape(shape)


def _from_ours(arr: np.ndarray, kind: str, hf_shape_in_out: tuple[int, int] | None = None) -> np.ndarray:
    if kind == "linear":
        n_in = hf_shape_in_out[0]
        return arr.reshape(n_in, -1).T
    if kind == "conv":
        return arr.transpose(3, 2, 0, 1)
    if kind == "head":
        return arr.T
    if kind == "bias":  # HF biases are flat ([H*Dh] for attention)
        return arr.reshape(-1)
    return arr


def _params_by_path(module: nnx.Module) -> dict[tuple, nnx.Variable]:
    return {tuple(p): v for p, v in nnx.iter_graph(module) if isinstance(v, nnx.Param)}


def _fill(model: LlavaModel, refs: dict[str, TensorRef], layout: str, *, parts: tuple[str, ...],
          where: str) -> set[tuple]:
    """Copies checkpoint tensors into `model`'s params. Returns the set of paths filled.

    Raises naming the key and its file for unknown keys and shape mismatches; `parts` limits
    which canonical groups ("vision", "projector", "lm") this checkpoint may provide.
    """
    cfg = model.config
    table = _param_table(cfg)
    params = _params_by_path(model)
    stacked: dict[tuple, dict[int, np.ndarray]] = {}
    filled: set[tuple] = set()
    for key, ref in sorted(refs.items()):
        name = _canonical(key, layout, cfg)
        if name is None or any(re.search(p, name) for p in _IGNORED):
            if name is None and not any(re.search(p, key) for p in _IGNORED):
                raise ValueError(f"unknown checkpoint key {key!r} in {ref.file} (layout {layout})")
            continue
        if name == "lm_head.weight" and cfg.text.tie_word_embeddings:
            continue  # tied: the head is the embedding matrix
        group = "lm" if name.startswith("lm") else name.split(".", 1)[0]
        if group not in parts:
            raise ValueError(f"checkpoint key {key!r} in {ref.file} is not expected in {where}")
        m = re.match(r"^(lm|vision\.encoder)\.layers\.(\d+)\.(.*)$", name)
        layer = None
        if m:
            layer = int(m.group(2))
            name = f"{m.group(1)}.layers.{{i}}.{m.group(3)}"
        if name not in table:
            raise ValueError(f"unknown checkpoint key {key!r} in {ref.file} (no parameter for {name!r})")
        path, kind = table[name]
        var = params[path]
        shape = tuple(var.shape)
        try:
            if layer is not None:
                if layer >= shape[0]:
                    raise ValueError(f"layer {layer} but the model has {shape[0]}")
                arr = _to_ours(ref.load(), kind, shape[1:])
                stacked.setdefault(path, {})[layer] = arr
                continue
            arr = _to_ours(ref.load(), kind, shape)
        except ValueError as e:
            raise ValueError(f"checkpoint key {key!r} in {ref.file}: {e}") from None
        _set(var, arr)
        filled.add(path)
    for path, layers in stacked.items():
        var = params[path]
        missing = sorted(set(range(var.shape[0])) - set(layers))
        if missing:
            raise ValueError(f"{where}: parameter {'.'.join(map(str, path))} lacks layers {missing}")
        _set(var, np.stack([layers[i] for i in range(var.shape[0])]))
        filled.add(path)
    return filled


def _set(var: nnx.Variable, arr: np.ndarray) -> None:
    value = jnp.asarray(arr, jnp.float32)
    old = var.get_value()
    sharding = getattr(old, "sharding", None)
    if isinstance(sharding, jax.sharding.NamedSharding):
        value = jax.device_put(value, sharding)
    var.set_value(value)


def _check_filled(model: LlavaModel, filled: set[tuple], prefixes: tuple[str, ...], where: str) -> None:
    missing = [".".join(map(str, p)) for p in _params_by_path(model)
               if p[0] in prefixes and p not in filled]
    if missing:
        raise ValueError(f"{where}: no checkpoint tensor for parameters {missing[:8]}"
                         + (f" and {len(missing) - 8} more" if len(missing) > 8 else ""))


def _abstract_model(cfg: LlavaConfig) -> LlavaModel:
    """The model with parameters as shape-only placeholders (no random init of what is loaded)."""
    return nnx.eval_shape(lambda: LlavaModel(cfg, rngs=nnx.Rngs(0)))


# ==============================================================================================
# Public API
# ==============================================================================================
def read_pretrained(path: str, *, vision_tower_path: str | None = None, dtype: str | None = None,
                    **config_overrides) -> tuple[LlavaConfig, LlavaModel]:
    """(config, model) from an HF LLaVA directory or an original-LLaVA-repo directory.
    `config_overrides` (e.g. remat="full", dtype="bfloat16") replace config fields. The
    original layout's vision tower is read from `vision_tower_path`, else the config's
    `mm_vision_tower` (a local path, a directory of that name next to the checkpoint, or the
    HF cache).
    """
    d = _read_json(path)
    if dtype is not None:
        config_overrides["dtype"] = dtype
    refs = index_safetensors(path)
    if d.get("model_type") == "llava" or "LlavaForConditionalGeneration" in (d.get("architectures") or []):
        cfg = config_from_hf(d, **config_overrides)
        model = _abstract_model(cfg)
        filled = _fill(model, refs, "llava_hf", parts=("vision", "projector", "lm", "lm_head"), where=path)
        _check_filled(model, filled, ("vision_tower", "connector", "language_model"), path)
        return cfg, model
    if "mm_vision_tower" in d or "mm_projector_type" in d or d.get("model_type") in ("llava_llama", "llava"):
        return _load_original(path, d, refs, vision_tower_path, config_overrides)
    raise ValueError(f"{path}/config.json is neither an HF LlavaForConditionalGeneration nor an "
                     f"original-LLaVA (LlavaLlamaForCausalLM) config (model_type={d.get('model_type')!r})")


def _load_original(path, d, refs, vision_tower_path, overrides):
    tower = vision_tower_path or resolve_vision_tower(d.get("mm_vision_tower", ""), path)
    has_moca = any(".modality_layernorm." in k for k in refs)
    select = d.get("mm_vision_select_feature", "patch")
    if select not in ("patch", "cls_patch"):
        raise ValueError(f"mm_vision_select_feature {select!r} not supported (patch, cls_patch)")
    proj = d.get("mm_projector_type", "linear")
    kw = dict(
        vision=vision_config_from_hf(_read_json(tower)),
        connector=ConnectorConfig(name=proj),
        text=text_config_from_hf({**d, "model_type": "llama"}),
        image_token_id=IMAGE_TOKEN_INDEX_ORIGINAL,
        pad_token_id=_first(d.get("pad_token_id"), 0), eos_token_id=_first(d.get("eos_token_id"), 2),
        vision_feature_layer=d.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy="default" if select == "patch" else "full",
        moca=has_moca,
    )
    kw.update(overrides)
    cfg = LlavaConfig(**kw)
    model = _abstract_model(cfg)
    has_tower_weights = any(k.startswith("model.vision_tower.") for k in refs)
    filled = _fill(model, refs, "llava_original", parts=("projector", "lm", "lm_head")
                   + (("vision",) if has_tower_weights else ()), where=path)
    if not has_tower_weights:
        filled |= _fill(model, index_safetensors(tower), "vision", parts=("vision",), where=tower)
    _check_filled(model, filled, ("vision_tower", "connector", "language_model"), path)
    return cfg, model


def build_stage1(vision_path: str, llm_path: str, *, connector: str | dict | ConnectorConfig = "mlp2x_gelu",
                 image_token_id: int | None = None, seed: int = 0, **config_overrides
                 ) -> tuple[LlavaConfig, LlavaModel]:
    """LLaVA stage-1 start: pretrained vision tower + pretrained causal LM + a fresh connector
    (and fresh MoCa, when `moca=True` is among the overrides).

    With `image_token_id=None` a new `<image>` row (mean of the existing rows) is appended to
    the vocabulary, keeping the model HF-LLaVA compatible.
    """
    vd, ld = _read_json(vision_path), _read_json(llm_path)
    text = text_config_from_hf(ld)
    add = image_token_id is None
    if add:
        image_token_id = text.vocab_size
        text = dataclasses.replace(text, vocab_size=text.vocab_size + 1)
    if isinstance(connector, str):
        connector = ConnectorConfig(name=connector)
    kw = dict(vision=vision_config_from_hf(vd), connector=connector, text=text, image_token_id=image_token_id,
              pad_token_id=_first(ld.get("pad_token_id"), 0), eos_token_id=_first(ld.get("eos_token_id"), 2))
    kw.update(config_overrides)
    cfg = LlavaConfig(**kw)
    model = _abstract_model(cfg)
    rngs = nnx.Rngs(seed)
    model.connector = Connector(cfg.vision.hidden_size * len(cfg.feature_layers), cfg.text.hidden_size,
                                cfg.connector, dtype=cfg.compute_dtype, rngs=rngs)
    filled = _fill(model, index_safetensors(vision_path), "vision", parts=("vision",), where=vision_path)
    lm_refs = index_safetensors(llm_path)
    if add:
        lm_refs = {k: _PaddedVocab(r) if k in ("model.embed_tokens.weight", "lm_head.weight") else r
                   for k, r in lm_refs.items()}
    filled |= _fill(model, lm_refs, "lm", parts=("lm", "lm_head"), where=llm_path)
    if cfg.moca:
        moca = make_stack(cfg.text.num_layers, lambda r: MoCa(cfg.text.hidden_size, cfg.moca_std, rngs=r), rngs)
        model.language_model.layers.moca.scale.set_value(moca.scale.get_value())
        model.language_model.layers.moca.shift.set_value(moca.shift.get_value())
        filled |= {p for p in _params_by_path(model) if "moca" in p}
    filled |= {p for p in _params_by_path(model) if p[0] == "connector"}
    _check_filled(model, filled, ("vision_tower", "connector", "language_model"), f"{vision_path} + {llm_path}")
    return cfg, model


class _PaddedVocab:
    """A TensorRef view with one extra row (the new image token) = mean of the others."""

    def __init__(self, ref: TensorRef):
        self.ref, self.file, self.key = ref, ref.file, ref.key

    def load(self) -> np.ndarray:
        a = self.ref.load().astype(np.float32)
        return np.concatenate([a, a.mean(0, keepdims=True)], axis=0)


def _hf_key(name: str) -> str:
    """Canonical name -> the key transformers' save_pretrained writes today."""
    for prefix, out in (("vision.", "vision_tower."), ("projector.", "multi_modal_projector."),
                        ("lm_head.", "language_model.lm_head."), ("lm.", "language_model.model.")):
        if name.startswith(prefix):
            return out + name[len(prefix):]
    raise AssertionError(name)


def save_pretrained(model: LlavaModel, path: str, *, copy_processor_from: str | None = None,
                    max_shard_bytes: int = 5 * 2**30) -> None:
    """Writes an HF `LlavaForConditionalGeneration` directory (config.json + float32 safetensors,
    sharded above `max_shard_bytes`), optionally copying tokenizer / preprocessor files from
    another directory (unless it is `path` itself) so the result is self-contained."""
    from safetensors.numpy import save_file

    cfg = model.config
    hf_cfg = config_to_hf(cfg)
    os.makedirs(path, exist_ok=True)
    params = _params_by_path(model)
    tensors: dict[str, np.ndarray] = {}
    for name, (p, kind) in _param_table(cfg).items():
        var = params[p]
        arr = np.asarray(jax.device_get(var.get_value()), np.float32)
        mod = _module_at(model, p[:-1])
        n_in = math.prod(var.shape[-mod.n_in - mod.n_out:][: mod.n_in]) if kind == "linear" else None
        if "{i}" in name:
            for i in range(arr.shape[0]):
                tensors[_hf_key(name.replace("{i}", str(i)))] = np.ascontiguousarray(
                    _from_ours(arr[i], kind, (n_in, 0)))
        else:
            tensors[_hf_key(name)] = np.ascontiguousarray(_from_ours(arr, kind, (n_in, 0)))
    shards, cur, size = [], {}, 0
    for k in sorted(tensors):
        nb = tensors[k].nbytes
        if cur and size + nb > max_shard_bytes:
            shards.append(cur)
            cur, size = {}, 0
        cur[k] = tensors[k]
        size += nb
    shards.append(cur)
    if len(shards) == 1:
        save_file(shards[0], os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for j, sh in enumerate(shards):
            fn = f"model-{j + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(sh, os.path.join(path, fn), metadata={"format": "pt"})
            weight_map.update(dict.fromkeys(sh, fn))
        with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": sum(t.nbytes for t in tensors.values())},
                       "weight_map": weight_map}, f, indent=2)
    with open(os.path.join(path, "config.json"), "w") as f:
        json.dump(hf_cfg, f, indent=2)
    # A directory that already holds its tokenizer (re-exported in place) has nothing to copy.
    if copy_processor_from and os.path.realpath(copy_processor_from) != os.path.realpath(path):
        for pat in ("tokenizer*", "special_tokens_map.json", "added_tokens.json", "*.model", "vocab*",
                    "merges.txt", "preprocessor_config.json", "processor_config.json", "chat_template*",
                    "generation_config.json"):
            for fl in glob.glob(os.path.join(copy_processor_from, pat)):
                shutil.copy(fl, path)


def _module_at(model, path: tuple):
    m = model
    for p in path:
        m = m[p] if isinstance(p, int) else getattr(m, p)
    return m


__all__ = [
    "IMAGE_TOKEN_INDEX_ORIGINAL", "build_stage1", "config_from_hf", "config_to_hf",
    "index_safetensors", "read_pretrained", "save_pretrained",
]
