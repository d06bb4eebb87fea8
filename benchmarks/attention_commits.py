"""Our attention against the same module at another commit: forward + backward, wall clock.

    python benchmarks/attention_commits.py [--commit 56c68bd] [--repeats 20] [--quick]

The other commit's `mir_jax/models/attention.py` is read with `git show` and loaded beside
ours in one process; each shape's three jitted value-and-gradient calls (that commit's
`attention(..., implementation="auto")`, ours "auto", ours "dense") are timed interleaved,
best of --repeats, and printed with ours / theirs (< 1: ours is faster). The default commit
is the last one with the CPU-tiled dense attention (BENCHMARKS.md, "session 19").
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import numpy as np
from timing import interleaved_best

from mir_jax.models import attention as ours

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
# (batch, length, heads, kv heads, head dim, causal, packed segments, what it stands for)
SHAPES = (
    (16, 128, 4, 4, 32, True, True, ":runlocal's 8-layer miniature LLM"),
    (16, 128, 4, 2, 32, True, True, "the 3-layer miniature LLM (2 kv heads)"),
    (16, 256, 4, 4, 32, True, True, "stage 0's 256-token rows"),
    (16, 17, 4, 4, 16, False, False, "the miniature ViT (4x4 patches + class)"),
    (8, 512, 8, 8, 64, True, False, "train_step.py's small LLM"),
    (8, 257, 4, 4, 64, False, False, "a ViT layer at 257 tokens"),
)


def load_module_at(commit: str):
    """That commit's attention module, imported under another name."""
    source = subprocess.run(["git", "-C", ROOT, "show", f"{commit}:mir_jax/models/attention.py"],
                            capture_output=True, text=True, check=True).stdout
    path = os.path.join(tempfile.mkdtemp(), f"attention_{commit}.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location(f"attention_{commit}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


def time_shape(theirs, shape, repeats):
    b, s, h, kvh, dh, causal, packed, _ = shape
    rng = np.random.default_rng(0)
    q = jnp.asarray(rng.standard_normal((b, s, h, dh), np.float32))
    k, v = (jnp.asarray(rng.standard_normal((b, s, kvh, dh), np.float32)) for _ in range(2))
    seg = None
    if packed:  # three documents a row, then padding
        seg = np.ones((b, s), np.int32)
        seg[:, s // 3:], seg[:, 2 * s // 3:], seg[:, -s // 8:] = 2, 3, 0
        seg = jnp.asarray(seg)
    calls = []
    for module, implementation in ((theirs, "auto"), (ours, "auto"), (ours, "dense")):
        def loss(q, k, v, module=module, implementation=implementation):
            mask = module.Mask(causal=causal, q_segment_ids=seg, kv_segment_ids=seg)
            return jnp.sum(module.attention(q, k, v, mask, implementation=implementation) ** 2)
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1, 2)))
        jax.block_until_ready(step(q, k, v))
        calls.append(lambda step=step: jax.block_until_ready(step(q, k, v)))
    return interleaved_best(repeats, *calls)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--commit", default="56c68bd")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--quick", action="store_true", help="the two smallest shapes")
    args = ap.parse_args()
    theirs = load_module_at(args.commit)
    shapes = SHAPES[2:4] if args.quick else SHAPES
    print(f"forward + backward, best of {args.repeats}, ms; ours / {args.commit} (< 1: ours is faster)")
    for shape in shapes:
        t_theirs, t_auto, t_dense = time_shape(theirs, shape, args.repeats)
        b, s, h, kvh, dh, causal, packed, what = shape
        picked = ours.select_implementation("auto", jnp.zeros((b, s, h, dh)), jnp.zeros((b, s, kvh, dh)),
                                            ours.Mask(causal=causal))
        print(f"[{b},{s},{h}/{kvh},{dh}] {'causal' if causal else 'bidirectional'}"
              f"{' packed' if packed else ''} ({what}; ours picks {picked}): {args.commit} {t_theirs * 1e3:.1f}, "
              f"ours auto {t_auto * 1e3:.1f} ({t_auto / t_theirs:.2f}x), ours dense {t_dense * 1e3:.1f} "
              f"({t_dense / t_theirs:.2f}x)")


if __name__ == "__main__":
    from timing import print_versions

    print_versions()
    main()
