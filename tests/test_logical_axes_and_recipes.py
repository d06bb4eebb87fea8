"""Unit tests of two tables everything else leans on: the logical-axis -> mesh-axis rules
(`mir_jax.sharding`) and the trainable-recipe resolver (`mir_jax.models.partition`), each
against hand-written expectations."""

from __future__ import annotations

import pytest
from jax.sharding import PartitionSpec as P

from mir_jax.models.partition import RECIPE_DEFAULTS, resolve_recipe
from mir_jax.sharding import LOGICAL_AXIS_RULES, MESH_AXES, eval_batch_rows, logical_to_mesh_spec


@pytest.mark.parametrize("logical, want", [
    (("batch", "length"), P(("data", "fsdp"), None)),               # activations: batch over data x fsdp
    (("batch", "length", "act_embed"), P(("data", "fsdp"), None, None)),
    (("vocab", "embed"), P("tensor", "fsdp")),                       # the embedding table
    (("embed", "mlp"), P("fsdp", "tensor")),                         # an MLP up-projection
    (("layers", "embed", "heads", "head_dim"), P(None, "fsdp", "tensor", None)),  # stacked q-proj
    (("layers", "embed", "kv_heads", "head_dim"), P(None, "fsdp", "tensor", None)),
    (("norm",), P(None)),
    (("vision_embed", "vision_mlp"), P("fsdp", "tensor")),
    (("patch", "channels", "vision_embed"), P(None, None, "fsdp")),
    ((None, "embed"), P(None, "fsdp")),                              # None stays replicated
    (("not_a_rule", "embed"), P(None, "fsdp")),                      # an unknown name: replicated
    # A mesh axis shards one dimension only: the second "tensor" axis is dropped...
    (("heads", "mlp"), P("tensor", None)),
    # ... and of a tuple of mesh axes only the unused ones remain.
    (("embed", "batch"), P("fsdp", "data")),
])
def test_logical_to_mesh_spec(logical, want):
    assert logical_to_mesh_spec(logical) == want


def test_rules_name_each_logical_axis_once_and_only_mesh_axes():
    names = [name for name, _ in LOGICAL_AXIS_RULES]
    assert len(names) == len(set(names))
    for _, target in LOGICAL_AXIS_RULES:
        targets = () if target is None else ((target,) if isinstance(target, str) else target)
        assert set(targets) <= set(MESH_AXES)


def test_other_rules_are_data():
    rules = (("embed", "tensor"), ("mlp", None))
    assert logical_to_mesh_spec(("embed", "mlp"), rules) == P("tensor", None)


@pytest.mark.parametrize("requested, shards, hosts, want", [
    (0, 1, 1, 16), (0, 8, 1, 16), (0, 256, 1, 256), (0, 5, 1, 20),  # auto: 16 rounded up
    (0, 8, 3, 24),                                                   # lcm(8, 3) = 24 >= 16
    (32, 8, 1, 32), (16, 8, 2, 16),                                  # explicit and divisible
])
def test_eval_batch_rows(requested, shards, hosts, want):
    assert eval_batch_rows(requested, shards, hosts) == want


def test_eval_batch_rows_refuses_what_does_not_split():
    with pytest.raises(ValueError, match="eval batch size 16 is not divisible by the 256 data-parallel"):
        eval_batch_rows(16, 256)


@pytest.mark.parametrize("recipe, vision_rows, llm_rows", [
    ({}, None, None),                                        # the defaults: connector only
    ({"vision": "all"}, (0, 24), None),
    ({"vision": "from:20"}, (20, 24), None),                 # the top 4 ViT layers
    ({"vision": "from:0"}, (0, 24), None),
    ({"llm": "all"}, None, (0, 32)),
    ({"llm": "until:8"}, None, (0, 8)),                      # the bottom 8 LLM layers
    ({"llm": "until:32", "vision": "from:23"}, (23, 24), (0, 32)),
])
def test_resolve_recipe_rows(recipe, vision_rows, llm_rows):
    r = resolve_recipe(recipe, num_vision_layers=24, num_llm_layers=32)
    assert r["vision_rows"] == vision_rows and r["llm_rows"] == llm_rows
    for key, default in RECIPE_DEFAULTS.items():
        assert r[key] == recipe.get(key, default)


@pytest.mark.parametrize("recipe, message", [
    ({"vision": "from:24"}, r"K must be in \[0, 23\] for a 24-layer vision tower"),
    ({"llm": "until:0"}, r"K must be in \[1, 32\] for a 32-layer LLM"),
    ({"llm": "until:x"}, "expected 'none', 'all' or 'until:K'"),
    ({"vision": "until:3"}, "expected 'none', 'all' or 'from:K'"),
    ({"llm": "from:3"}, "expected 'none', 'all' or 'until:K'"),
    ({"vison": "all"}, r"unknown trainable keys \['vison'\]"),
])
def test_resolve_recipe_errors(recipe, message):
    with pytest.raises(ValueError, match=message):
        resolve_recipe(recipe, num_vision_layers=24, num_llm_layers=32)
