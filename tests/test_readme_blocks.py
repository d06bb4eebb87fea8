"""Every ```python block of README.md and docs/*.md runs as pasted, in the repository's root, each
in a fresh Python process (CI runs the shell blocks verbatim from .ci/run). A block that needs
files the repository does not ship is marked by the line `<!-- needs-data -->` right before it,
and is only compiled. A block that defines `get_study` (a study file, docs/studies.md) is also
resolved into its runs, as study.py would."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NEEDS_DATA = "<!-- needs-data -->"
FENCE = re.compile(r"^```(\w*)\s*$")


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """(first line number, code, needs_data) of every ```python block of a markdown text;
    needs_data when the nearest non-blank line above the fence is NEEDS_DATA."""
    lines = text.splitlines()
    blocks, i = [], 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        end = next((j for j in range(i + 1, len(lines)) if lines[j].startswith("```")), len(lines))
        if m.group(1) == "python":
            above = next((ln.strip() for ln in reversed(lines[:i]) if ln.strip()), "")
            blocks.append((i + 2, "\n".join(lines[i + 1:end]) + "\n", above == NEEDS_DATA))
        i = end + 1
    return blocks


def _all_blocks():
    files = [os.path.join(ROOT, "README.md"), *sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))]
    out = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            for line, code, needs_data in python_blocks(f.read()):
                out.append(pytest.param(code, needs_data, id=f"{os.path.relpath(path, ROOT)}:{line}"))
    return out


BLOCKS = _all_blocks()

# Run after a block: a study file is also planned and its configs resolved, as study.py does.
STUDY_CHECK = """
if "get_study" in globals():
    import tempfile
    from mir_jax import studies
    study = studies.from_dict(get_study(None))
    runs = studies.plan(study, tempfile.mkdtemp())
    assert runs, "a study with no runs"
    for r in runs:
        studies.runs.resolve_config(r, {root!r})
    print(f"study {{study.name}}: {{len(runs)}} runs resolve")
"""


def test_extraction_finds_blocks_and_honours_the_marker():
    text = ("Intro.\n\n```python\nx = 1\n```\n\n<!-- needs-data -->\n```python\nopen('/data/x')\n```\n"
            "```bash\necho no\n```\n<!-- needs-data -->\n\nSome words.\n```python\ny = 2\n```\n")
    assert python_blocks(text) == [(4, "x = 1\n", False), (9, "open('/data/x')\n", True),
                                   (18, "y = 2\n", False)]
    ids = [p.id for p in BLOCKS]
    assert any(i.startswith("README.md:") for i in ids), ids  # the MIR snippet is checked


@pytest.mark.slow  # a fresh Python and JAX per block
@pytest.mark.parametrize("code, needs_data", BLOCKS)
def test_block_runs(code, needs_data, tmp_path):
    if needs_data:
        compile(code, "<block>", "exec")  # at least it is Python
        pytest.skip("marked <!-- needs-data -->: runs only with the data it names")
    script = tmp_path / "block.py"
    script.write_text(code + STUDY_CHECK.format(root=ROOT))
    env = {**os.environ, "PYTHONPATH": ROOT, "XLA_FLAGS": "", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, str(script)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
