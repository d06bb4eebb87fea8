"""Checks of a training config before anything heavy runs (no model, no data read, no compile).

`check_config(config)` raises one ConfigError listing every impossible value, unset
`required()` placeholder, unfitting tokenizer and missing data file, each with the
--config.KEY override that fixes it. `register_list_overrides()` makes list- and dict-valued
keys overridable with JSON (a JSON object replaces the whole dict), e.g.
`--config.evals='{"vqa": {"every": 500}}'`; one key: `--config.evals.vqa.every=500`.
"""

from __future__ import annotations

import ast
import glob
import json
import os

from absl import flags


class ConfigError(ValueError):
    """A config that cannot run; the message is one line listing every problem."""


def required():
    """A config value the recipe cannot guess (a path on the user's machine): None until set.

    Typed, so `--config.KEY=VALUE` parses as a string; `check_config` reports it while None."""
    from ml_collections import config_dict

    return config_dict.placeholder(str)


# ----- values -----------------------------------------------------------------------------------

def _int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


_POSITIVE_INT = (lambda v: _int(v) and v > 0, "must be a positive integer")
_NONNEG_INT = (lambda v: _int(v) and v >= 0, "must be an integer >= 0")
_POSITIVE = (lambda v: _num(v) and v > 0, "must be > 0")
_NONNEG = (lambda v: _num(v) and v >= 0, "must be >= 0")
_BETA = (lambda v: _num(v) and 0 <= v < 1, "must be in [0, 1)")
_FRACTION = (lambda v: _num(v) and 0 <= v <= 1, "must be in [0, 1]")

# key -> rule. Keys a config lacks are skipped (the trainer has defaults for some of them).
VALUE_RULES = {
    "total_steps": _POSITIVE_INT, "batch_size": _POSITIVE_INT, "num_micro_batches": _POSITIVE_INT,
    "seq_len": _POSITIVE_INT, "log_every": _POSITIVE_INT, "max_bad_steps": _NONNEG_INT,
    "z_loss": _NONNEG, "peak_flops": _NONNEG,
    "optimizer.lr": _POSITIVE, "optimizer.warmup_steps": _NONNEG_INT,
    "optimizer.end_factor": _NONNEG, "optimizer.b1": _BETA, "optimizer.b2": _BETA,
    "optimizer.eps": _POSITIVE, "optimizer.weight_decay": _NONNEG, "optimizer.clip_norm": _NONNEG,
    "checkpoint.every": _NONNEG_INT, "checkpoint.keep": _POSITIVE_INT,
}

_MISSING = object()


def _get(config, key: str):
    node = config
    for part in key.split("."):
        try:
            node = node[part]
        except (KeyError, TypeError, AttributeError):
            return _MISSING
    return node


def _value_problems(config) -> list[str]:
    out = []
    for key, (ok, rule) in VALUE_RULES.items():
        v = _get(config, key)
        if v is not _MISSING and not ok(v):
            out.append(f"{key}={v!r} {rule}")
    mesh = _get(config, "mesh")
    if mesh is not _MISSING:
        sizes = list(mesh) if isinstance(mesh, (list, tuple)) else None
        if (sizes is None or len(sizes) != 3 or not all(_int(s) and (s >= 1 or s == -1) for s in sizes)
                or sizes.count(-1) > 1):
            out.append(f"mesh={mesh!r} must be three sizes (data, fsdp, tensor), each >= 1 or one -1")
    return out


def _model_problems(config) -> tuple[list[str], object]:
    """(problems, LlavaConfig or None): the model config as the trainer will build it."""
    from mir_jax.models import LlavaConfig
    from mir_jax.models.partition import resolve_recipe

    model = _get(config, "model")
    if model is _MISSING:
        return [], None
    try:
        mc = LlavaConfig.from_dict(model)
    except (ValueError, TypeError, KeyError) as e:  # unknown connector name, bad remat, ...
        return [f"model: {e}"], None
    trainable = _get(config, "trainable")
    if trainable is not _MISSING:
        try:
            resolve_recipe(trainable, mc.vision.num_layers, mc.text.num_layers)
        except ValueError as e:
            return [str(e)], mc
    return [], mc


def _data_problems(config) -> list[str]:
    from mir_jax.data.mixture import resolve_config
    from mir_jax.data.pipeline import OVERLONG
    from mir_jax.data.sources import SOURCE_TYPES
    from mir_jax.data.templates import TEMPLATES

    data = _get(config, "data")
    if data is _MISSING:
        return []
    try:
        cfg = resolve_config(data)
    except ValueError as e:
        return [f"data: {e}"]
    out = []
    # eval_sources defaults to sources: check it only where the config sets it.
    for which in ("sources", "eval_sources") if data.get("eval_sources") else ("sources",):
        for i, s in enumerate(cfg[which]):
            where = f"data.{which}[{i}]"
            if s.get("type") not in SOURCE_TYPES:
                out.append(f"{where}.type={s.get('type')!r} is not one of {list(SOURCE_TYPES)}")
            if s.get("template") is not None and s["template"] not in TEMPLATES:
                out.append(f"{where}.template={s['template']!r} is not one of {list(TEMPLATES)}")
            if s.get("overlong") is not None and s["overlong"] not in OVERLONG:
                out.append(f"{where}.overlong={s['overlong']!r} is not one of {list(OVERLONG)}")
            if not _num(s.get("weight", 1.0)) or s.get("weight", 1.0) < 0:
                out.append(f"{where}.weight={s.get('weight')!r} must be >= 0")
            if not _FRACTION[0](s.get("max_bad_fraction", 0.0)):
                out.append(f"{where}.max_bad_fraction={s['max_bad_fraction']!r} {_FRACTION[1]}")
        if which == "sources" and cfg["sources"] and not any(
                _num(s.get("weight", 1.0)) and s.get("weight", 1.0) > 0 for s in cfg["sources"]):
            out.append("data.sources: no source has a positive weight")
    return out


# ----- what must be set ---------------------------------------------------------------------------

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")


def _tokenizer_problems(config, model_config) -> list[str]:
    tok = _get(config, "tokenizer")
    if tok is _MISSING:
        return []
    how = "--config.tokenizer=DIR (the LLM's Hugging Face tokenizer directory)"
    if tok is None:
        return [f"tokenizer is not set: {how}"]
    if tok == "byte":
        from mir_jax.data.tokenizer import ByteTokenizer

        bt = ByteTokenizer
        if model_config is not None and (model_config.text.vocab_size < bt.vocab_size
                                         or model_config.image_token_id != bt.image_token_id):
            return [f"tokenizer='byte' (built in: {bt.vocab_size} ids, image id {bt.image_token_id}) does not "
                    f"fit config.model (vocab_size {model_config.text.vocab_size}, image_token_id "
                    f"{model_config.image_token_id}): {how}"]
        return []
    if not os.path.isdir(tok):
        return [f"tokenizer directory {tok!r} does not exist: {how}"]
    if not any(os.path.exists(os.path.join(tok, f)) for f in _TOKENIZER_FILES):
        return [f"tokenizer directory {tok!r} has none of {list(_TOKENIZER_FILES)}: {how}"]
    return []


def _init_from_problems(config) -> list[str]:
    from mir_jax.weights import parts as init_lib

    init = _get(config, "init_from")
    how = ("--config.init_from=DIR (a Hugging Face or original LLaVA checkpoint directory, e.g. "
           "one written by mir_jax.weights.hf.build_stage1 + save_pretrained, or a training workdir, "
           "WORKDIR@STEP for a given step; --config.init_from= starts from random weights)")
    if init is None:
        return [f"init_from is not set: {how}"]
    out = []
    if init and init is not _MISSING and not init_lib.source_exists(init):
        out.append(f"init_from directory {init!r} does not exist: {how}")
    parts = _get(config, "init_parts")
    if parts is not _MISSING:
        try:
            init_lib.parse_parts(parts)
        except init_lib.InitError as e:
            out.append(str(e))
    return out


def _exists(path: str, *, folder: bool = False) -> bool:
    if folder:
        return os.path.isdir(path)
    return os.path.exists(path) or (any(ch in path for ch in "*?[") and bool(glob.glob(path)))


def _path_problems(config) -> list[str]:
    """Every data file/folder the config names that is not there (synthetic sources need none)."""
    data = _get(config, "data")
    out = []
    if data is not _MISSING:
        from mir_jax.data.mixture import resolve_config

        try:
            cfg = resolve_config(data)
        except ValueError:
            cfg = None  # reported by _data_problems
        if cfg is not None:
            missing = []
            for which in ("sources", "eval_sources") if data.get("eval_sources") else ("sources",):
                for i, s in enumerate(cfg[which]):
                    if s.get("type") in ("llava", "captions", "interleaved", "text", "images"):
                        path = s.get("path")
                        if not isinstance(path, str) or not _exists(path, folder=s["type"] == "images"):
                            missing.append(f"data.{which}[{i}].path {path!r}")
                        folder = s.get("image_folder")
                        if folder and not _exists(folder, folder=True):
                            missing.append(f"data.{which}[{i}].image_folder {folder!r}")
                    elif s.get("type") == "tfds":
                        d = s.get("data_dir")
                        if isinstance(d, str) and "://" not in d and not os.path.isdir(d):
                            missing.append(f"data.{which}[{i}].data_dir {d!r}")
            if missing:
                now = json.dumps(list(data.get("sources") or []))
                out.append(f"{', '.join(missing)} not found: set the sources with "
                           f"--config.data.sources='<JSON list>' (now: {now})")
    evals = _get(config, "evals")
    for key, entry in (evals.items() if hasattr(evals, "items") else []):
        if not hasattr(entry, "get") or (entry.get("evaluator") or key) != "mir":
            continue
        for option in ("images", "texts"):  # the MIR evaluator's data
            v = entry.get(option)
            if isinstance(v, str) and v != "synthetic" and not _exists(v):
                out.append(f"evals.{key}.{option} {v!r} not found: --config.evals.{key}.{option}=PATH or 'synthetic'")
    return out


def _evals_problems(config) -> list[str]:
    """`evals` is a dict keyed by name; each entry names a known evaluator (its key, or its
    "evaluator"), with options it takes, possible values and `every` >= 0."""
    evals = _get(config, "evals")
    if evals is _MISSING:
        return []
    from mir_jax.evals.base import build_evals, evals_items

    try:
        items = evals_items(evals)
    except ValueError as e:
        return [str(e)]
    out = []
    for key, entry in items:
        try:
            build_evals({key: entry})
        except ValueError as e:
            out.append(str(e))
    return out


def check_config(config) -> None:
    """Raises ConfigError (one line, every problem with its fix) unless the config can run.

    Reads nothing but the file system's directory entries: no model is built, no data read."""
    problems = _value_problems(config)
    model_problems, model_config = _model_problems(config)
    problems += model_problems + _data_problems(config) + _evals_problems(config)
    problems += _tokenizer_problems(config, model_config) + _init_from_problems(config)
    problems += _path_problems(config)
    if problems:
        n = len(problems)
        raise ConfigError(f"config has {n} problem{'s' * (n > 1)}: " + "; ".join(problems))


# ----- list-valued overrides ------------------------------------------------------------------------

class JsonListParser(flags.ArgumentParser):
    """`--config.KEY=[...]` for a list-valued KEY: a JSON list (or a Python literal list)."""

    def parse(self, argument):
        if isinstance(argument, (list, tuple)):  # the config's own value, as the flag's default
            return list(argument)
        try:
            value = json.loads(argument)
        except json.JSONDecodeError as e:
            try:
                value = ast.literal_eval(argument)
            except (ValueError, SyntaxError):
                raise ValueError(f"{argument!r} is not a JSON list ({e.msg}, column {e.colno})") from None
        if not isinstance(value, list):
            raise ValueError(f"{argument!r} is not a list; write a JSON list, e.g. '[{{\"type\": ...}}]'")
        return value

    def flag_type(self):
        return "JSON list"


class JsonDictParser(flags.ArgumentParser):
    """`--config.KEY={...}` for a dict-valued KEY (a ConfigDict): a JSON object, which replaces
    the whole dict (e.g. `--config.evals='{"vqa": {"every": 500}}'`)."""

    def parse(self, argument):
        from ml_collections import ConfigDict

        if isinstance(argument, (dict, ConfigDict)):  # the config's own value, as the flag's default
            return argument
        try:
            value = json.loads(argument)
        except json.JSONDecodeError as e:
            raise ValueError(f"{argument!r} is not a JSON object ({e.msg}, column {e.colno})") from None
        if not isinstance(value, dict):
            raise ValueError(f"{argument!r} is not a JSON object; this key is a dict keyed by name, e.g. "
                             "'{\"vqa\": {\"every\": 500, \"shots\": 4}}'")
        return ConfigDict(value)

    def flag_type(self):
        return "JSON object"


def load_recipe(spec: str):
    """The config of a recipe 'configs/X.py[:ARG]', before any override: its `get_config(ARG)`.
    The file is loaded as a module the way `config_flags` loads it (exceptions propagate)."""
    import importlib.util

    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("config", path)
    if module_spec is None:
        raise FileNotFoundError(f"{path} is not a Python config file")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def register_list_overrides() -> None:
    """Lets ml_collections' config flags override list-valued keys with a JSON list and
    dict-valued ones with a JSON object (call before flag parsing)."""
    from ml_collections import ConfigDict, config_flags

    config_flags.register_flag_parser_for_type(list, JsonListParser())
    config_flags.register_flag_parser_for_type(ConfigDict, JsonDictParser())


def unknown_key(config, key: str) -> str | None:
    """Why `--config.KEY=...` names no key of `config` ("a.b: 'a' has no 'b'; known: [...]"),
    or None when the key exists (config flags would fail with a bare AttributeError)."""
    node, walked = config, []
    for part in key.split("."):
        keys = list(node.keys()) if hasattr(node, "keys") else []
        if part not in keys:
            where = ".".join(walked) or "the top level"
            return f"unknown config key {key!r}: {where} has no {part!r}; known: {sorted(keys)}"
        node, walked = node[part], walked + [part]
    return None
