"""The package's layers: each imports only the layers below it, and no module imports itself
back through others (no import circles). Read from the source with `ast`, so an import inside
a function counts as much as one at the top of a module."""

from __future__ import annotations

import ast
import os
import re

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mir_jax")

# Lowest first. A module may import its own layer and the layers before it, nothing after.
LAYERS = (
    ("base", ("mir_jax", "mir_jax.sharding", "mir_jax.distributed", "mir_jax.compile_cache",
              "mir_jax.provenance", "mir_jax.allocator")),
    ("models", ("mir_jax.models",)),
    ("mir", ("mir_jax.mir",)),
    ("data", ("mir_jax.data",)),
    ("weights", ("mir_jax.weights",)),
    ("evals", ("mir_jax.evals",)),
    ("train", ("mir_jax.train",)),
    ("studies", ("mir_jax.studies",)),
)


def _modules() -> dict[str, str]:
    """{dotted module name: file path} for every module of the package."""
    out = {}
    for directory, _, files in os.walk(ROOT):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(directory, f)
                rel = os.path.relpath(path, os.path.dirname(ROOT))[:-3].replace(os.sep, ".")
                out[rel.removesuffix(".__init__")] = path
    return out


MODULES = _modules()


def _imports(name: str, path: str) -> set[str]:
    """The package modules `name` imports (a `from pkg import sub` of a submodule names it)."""
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[:len(parts) - node.level + 1])
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            submodules = {f"{target}.{a.name}" for a in node.names} & MODULES.keys()
            # `from pkg import sub` of submodules only imports them (pkg is merely their parent).
            found.update(submodules if len(submodules) == len(node.names) else {target, *submodules})
    return {m for m in found if m in MODULES and m != name}


def _layer(module: str) -> int:
    """Index of the layer that holds `module` (the longest matching prefix decides)."""
    best, index = -1, None
    for i, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best:
                best, index = len(prefix), i
    assert index is not None, f"{module} is in no layer: add it to LAYERS in {__file__}"
    return index


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_imports_only_lower_layers(module):
    mine = _layer(module)
    upward = sorted(m for m in GRAPH[module] if _layer(m) > mine)
    assert not upward, (f"{module} (layer {LAYERS[mine][0]}) imports a higher layer: "
                        + ", ".join(f"{m} ({LAYERS[_layer(m)][0]})" for m in upward))


def test_no_import_circles():
    """Depth-first search for a back edge; a package's `__init__` importing its submodules is
    an edge like any other, so a submodule that imports its own package closes a circle."""
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert not cycles, "import circles: " + "; ".join(" -> ".join(c) for c in cycles)


def test_the_checker_sees_an_upward_import(tmp_path):
    """The test itself can fail: a lower layer importing a higher one is reported."""
    fake = tmp_path / "fake.py"
    fake.write_text("from mir_jax.train import step\nfrom . import kernel\nfrom .. import models\n")
    found = _imports("mir_jax.mir.fake", str(fake))
    assert found == {"mir_jax.train.step", "mir_jax.mir.kernel", "mir_jax.models"}
    assert max(_layer(m) for m in found) > _layer("mir_jax.mir.fake")


# Private modules and names of our dependencies that the code must not reach for (issue 28).
PRIVATE_API = re.compile(r"\bjax\._src\b|config_flags\._[A-Za-z]|ocp\.[\w.]*\._[A-Za-z]|_min_slice_bytes")
SOURCE_DIRS = ("mir_jax", "tests", "benchmarks", "tools")


def _sources():
    root = os.path.dirname(ROOT)
    for folder in SOURCE_DIRS:
        for directory, _, files in os.walk(os.path.join(root, folder)):
            for f in files:
                if f.endswith(".py") and f != os.path.basename(__file__):
                    yield os.path.join(directory, f)
    for tool in ("train.py", "evaluate.py", "study.py"):
        yield os.path.join(root, tool)


def test_no_private_apis_of_dependencies():
    found = [f"{os.path.relpath(path, os.path.dirname(ROOT))}:{n}: {line.strip()}"
             for path in _sources() for n, line in enumerate(open(path), 1) if PRIVATE_API.search(line)]
    assert not found, "private APIs of jax / orbax / ml_collections:\n" + "\n".join(found)


def test_the_training_loop_shares_no_state_through_closures():
    assert "nonlocal" not in open(os.path.join(ROOT, "train", "loop.py")).read()
    assert PRIVATE_API.search("from jax._src import xla_bridge")  # the pattern itself can match
