"""Which parameters train: the recipe's trainable subset, as two flat dicts of arrays.

Parameters are flattened to dotted keys ("language_model.layers.mlp.up_proj.kernel") and
split into `trainable` (differentiated; the only thing optax sees) and `frozen` (a constant
of the step, never donated). A cut inside a stacked "layers" axis stores the leaf as two row
ranges under the same key, concatenated back inside the jitted step (that axis is never
sharded, so the slices keep the parent's sharding).

The recipe (`config.trainable`, all optional):
  connector: bool                        the vision-to-language connector;
  vision:    "none" | "all" | "from:K"   the ViT (layers K.. of the tower; stem stays frozen);
  llm:       "none" | "all" | "until:K"  the LLM (its first K decoder layers; embeddings,
                                         final norm and LM head train only with "all");
  moca:      bool                        MoCa's per-layer scale/shift.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding

from mir_jax.sharding import LOGICAL_AXIS_RULES, logical_to_mesh_spec

RECIPE_DEFAULTS = {"connector": True, "vision": "none", "llm": "none", "moca": True}
# Leaves without weight decay: normalization scales/biases, all biases, MoCa's scale/shift.
NO_DECAY_NAMES = ("bias", "scale", "shift")


@dataclasses.dataclass(frozen=True)
class Leaf:
    """One parameter: dotted key, shape, logical axis names, and which rows train.

    rows: None = frozen, "all" = trainable, (start, stop) = those rows of the stacked axis 0
    train and the rest are frozen.
    """

    key: str
    shape: tuple[int, ...]
    names: tuple[str | None, ...]
    rows: None | str | tuple[int, int]


def _parse_range(spec: str, prefix: str, num_layers: int, what: str) -> int:
    try:
        k = int(spec[len(prefix):])
    except ValueError:
        raise ValueError(f"trainable.{what}={spec!r}: expected 'none', 'all' or '{prefix}K'") from None
    lo, hi = (0, num_layers - 1) if prefix == "from:" else (1, num_layers)
    if not lo <= k <= hi:
        raise ValueError(f"trainable.{what}={spec!r}: K must be in [{lo}, {hi}] for a "
                         f"{num_layers}-layer {'vision tower' if what == 'vision' else 'LLM'}")
    return k


def resolve_recipe(recipe: Mapping | None, num_vision_layers: int, num_llm_layers: int) -> dict:
    """Recipe with defaults, validated; "from:K"/"until:K" turned into row ranges."""
    recipe = dict(recipe or {})  # a dict or the trainer's ConfigDict
    unknown = sorted(set(recipe) - set(RECIPE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown trainable keys {unknown}; known: {sorted(RECIPE_DEFAULTS)}")
    r = {**RECIPE_DEFAULTS, **recipe}
    vision, llm = str(r["vision"]), str(r["llm"])
    if vision in ("none", "all"):
        r["vision_rows"] = None if vision == "none" else (0, num_vision_layers)
    elif vision.startswith("from:"):
        r["vision_rows"] = (_parse_range(vision, "from:", num_vision_layers, "vision"), num_vision_layers)
    else:
        raise ValueError(f"trainable.vision={vision!r}: expected 'none', 'all' or 'from:K'")
    if llm in ("none", "all"):
        r["llm_rows"] = None if llm == "none" else (0, num_llm_layers)
    elif llm.startswith("until:"):
        r["llm_rows"] = (0, _parse_range(llm, "until:", num_llm_layers, "llm"))
    else:
        raise ValueError(f"trainable.llm={llm!r}: expected 'none', 'all' or 'until:K'")
    return r


def _leaf_rows(path: tuple, shape: tuple[int, ...], r: dict) -> None | str | tuple[int, int]:
    top = path[0]
    stacked = len(path) > 1 and path[1] == "layers"
    if "moca" in path:
        return "all" if r["moca"] else None
    if top == "connector":
        return "all" if r["connector"] else None
    if top in ("vision_tower", "language_model"):
        full = r["vision"] == "all" if top == "vision_tower" else r["llm"] == "all"
        rows = r["vision_rows"] if top == "vision_tower" else r["llm_rows"]
        if full:
            return "all"
        if rows is None:
            return None
        if stacked:
            return "all" if rows == (0, shape[0]) else rows
        # Outside the stack: the ViT's post-LayerNorm follows the trainable top layers (LLaVA
        # never reads it, but a tower trained from layer K keeps its own output coherent).
        return "all" if top == "vision_tower" and path[1] == "post_layernorm" else None
    raise ValueError(f"parameter {'.'.join(map(str, path))} belongs to no known part of the model")


class ParamPartition:
    """Splits/combines the model's parameter State according to a trainable recipe.

    Build it from an abstract (`nnx.eval_shape`) or concrete Param State; the tree structure
    is kept so `combine` rebuilds a State that `nnx.merge` accepts.
    """

    def __init__(self, params_state: nnx.State, recipe: Mapping | None, *,
                 num_vision_layers: int, num_llm_layers: int):
        self.recipe = resolve_recipe(recipe, num_vision_layers, num_llm_layers)
        flat, self._treedef = jax.tree_util.tree_flatten_with_path(
            params_state, is_leaf=lambda x: isinstance(x, nnx.Variable))
        self.leaves: list[Leaf] = []
        for path, var in flat:
            names = tuple(p.key if hasattr(p, "key") else p.idx for p in path)
            key = ".".join(str(n) for n in names)
            meta = var.get_metadata().get("out_sharding") or (None,) * len(var.shape)
            self.leaves.append(Leaf(key, tuple(var.shape), tuple(meta), _leaf_rows(names, var.shape, self.recipe)))
        if not any(leaf.rows is not None for leaf in self.leaves):
            raise ValueError(f"trainable recipe {self.recipe} leaves no parameter to train")

    # ----- split / combine -------------------------------------------------------------
    def split(self, params_state: nnx.State) -> tuple[dict, dict]:
        """Param State -> (trainable {key: array}, frozen {key: array})."""
        values = [v.get_value() if isinstance(v, nnx.Variable) else v for v in jax.tree.leaves(
            params_state, is_leaf=lambda x: isinstance(x, nnx.Variable))]
        if len(values) != len(self.leaves):
            raise ValueError(f"parameter tree has {len(values)} leaves, partition expects {len(self.leaves)}")
        trainable, frozen = {}, {}
        for leaf, v in zip(self.leaves, values):
            if leaf.rows is None:
                frozen[leaf.key] = v
            elif leaf.rows == "all":
                trainable[leaf.key] = v
            else:
                a, b = leaf.rows
                trainable[leaf.key] = v[a:b]
                if a > 0 and b < leaf.shape[0]:
                    raise AssertionError("a trainable row range touches one end of the stack")
                frozen[leaf.key] = v[:a] if a > 0 else v[b:]
        return trainable, frozen

    def combine(self, trainable: Mapping, frozen: Mapping) -> nnx.State:
        """(trainable, frozen) -> Param State with the original tree structure (jittable)."""
        values = []
        for leaf in self.leaves:
            if leaf.rows is None:
                values.append(frozen[leaf.key])
            elif leaf.rows == "all":
                values.append(trainable[leaf.key])
            else:
                a, _ = leaf.rows
                parts = (frozen[leaf.key], trainable[leaf.key]) if a > 0 else (trainable[leaf.key], frozen[leaf.key])
                values.append(jnp.concatenate(parts, axis=0))
        return jax.tree_util.tree_unflatten(self._treedef, values)

    # ----- metadata --------------------------------------------------------------------
    def shardings(self, mesh: Mesh, rules=LOGICAL_AXIS_RULES) -> tuple[dict, dict]:
        """NamedShardings for (trainable, frozen) from each parameter's logical axis names."""
        tr, fr = {}, {}
        for leaf in self.leaves:
            s = NamedSharding(mesh, logical_to_mesh_spec(leaf.names, rules))
            if leaf.rows is not None:
                tr[leaf.key] = s
            if leaf.rows != "all":
                fr[leaf.key] = s
        return tr, fr

    def decay_mask(self) -> dict[str, bool]:
        """{trainable key: apply weight decay?}: no decay for norms, biases and MoCa."""
        return {leaf.key: leaf.key.rsplit(".", 1)[-1] not in NO_DECAY_NAMES
                for leaf in self.leaves if leaf.rows is not None}

    def counts(self) -> tuple[int, int]:
        """(trainable, frozen) parameter counts."""
        tr = fr = 0
        for leaf in self.leaves:
            n = math.prod(leaf.shape)
            if leaf.rows is None:
                fr += n
            elif leaf.rows == "all":
                tr += n
            else:
                a, b = leaf.rows
                k = n // leaf.shape[0] * (b - a)
                tr, fr = tr + k, fr + n - k
        return tr, fr


def partition_model(model_config, recipe) -> tuple[nnx.GraphDef, nnx.State, ParamPartition]:
    """(graphdef, abstract Param state, ParamPartition) of the model `model_config` describes,
    split by the trainable `recipe`: built with `nnx.eval_shape`, so nothing is allocated and
    no parameter is placed on a device. What the train step (`step.Stepper`) and the params-only
    checkpoint restore (`checkpoint.abstract_params`) both start from."""
    from mir_jax.models import LlavaModel

    abstract = nnx.eval_shape(lambda: LlavaModel(model_config, rngs=nnx.Rngs(0)))
    graphdef, params, rest = nnx.split(abstract, nnx.Param, ...)
    if jax.tree.leaves(rest):
        raise NotImplementedError("the model holds non-Param state; the train step only carries Params")
    partition = ParamPartition(params, recipe, num_vision_layers=model_config.vision.num_layers,
                               num_llm_layers=model_config.text.num_layers)
    return graphdef, params, partition
