"""Blockwise (online-softmax) attention against the dense path on this machine's default backend.

For each sequence length: the forward and the forward+backward (gradients of q, k, v) of one
causal attention call, dense (scores materialized, autodiff), blockwise batched and blockwise
looped over (batch row, kv head) slices (what "auto" runs on one CPU device), timed
interleaved; then XLA's memory analysis of the compiled forward+backward (temporaries, i.e.
everything but inputs and outputs) for each. Ratios are against dense.

    python benchmarks/attention.py [--lengths 1024 2048 4096] [--batch 1] [--heads 8] [--kv_heads 8]
        [--head_dim 64] [--block 512 512] [--repeats 3] [--memory_only] [--bidirectional]

--block sets both blockwise forms' tiles; by default each takes its own (BLOCK_Q x BLOCK_KV
batched, CPU_BLOCK rows looped).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import jax
import jax.numpy as jnp
import numpy as np
from timing import interleaved_best

from mir_jax.models import attention as attn


def fns(block_q: int | None, block_kv: int | None, causal: bool = True):
    mask = attn.Mask(causal=causal)

    def block(head_loop):
        return lambda q, k, v: attn.blockwise_attention(q, k, v, mask, block_q=block_q, block_kv=block_kv,
                                                        head_loop=head_loop)

    return {"dense": lambda q, k, v: attn.dense_attention(q, k, v, mask),
            "blockwise": block(False), "looped": block(True)}


def grad_of(f):
    return jax.grad(lambda q, k, v: jnp.sum(f(q, k, v).astype(jnp.float32) ** 2), argnums=(0, 1, 2))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096])
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--kv_heads", type=int, default=8)
    ap.add_argument("--head_dim", type=int, default=64)
    ap.add_argument("--block", type=int, nargs=2, default=[None, None])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--memory_only", action="store_true")
    ap.add_argument("--bidirectional", action="store_true", help="no causal mask (ViT layers)")
    args = ap.parse_args()
    print(f"backend {jax.default_backend()}, B={args.batch} H={args.heads} KVH={args.kv_heads} "
          f"Dh={args.head_dim}, {'bidirectional' if args.bidirectional else 'causal'}, float32, "
          f"blocks {args.block}")
    impl = fns(*args.block, causal=not args.bidirectional)
    rng = np.random.default_rng(0)
    for s in args.lengths:
        q = jnp.asarray(rng.standard_normal((args.batch, s, args.heads, args.head_dim)), jnp.float32)
        k, v = (jnp.asarray(rng.standard_normal((args.batch, s, args.kv_heads, args.head_dim)), jnp.float32)
                for _ in range(2))
        scores = args.batch * args.heads * s * s * 4
        row = [f"S={s}: scores [B,H,S,S] f32 = {scores / 2**20:.0f} MiB"]
        for name, f in impl.items():
            mem = jax.jit(grad_of(f)).lower(q, k, v).compile().memory_analysis()
            row.append(f"{name} fwd+bwd temp {mem.temp_size_in_bytes / 2**20:.1f} MiB")
        print("; ".join(row), flush=True)
        if args.memory_only:
            continue
        for label, wrap in (("fwd", lambda f: f), ("fwd+bwd", grad_of)):
            compiled = {n: jax.jit(wrap(f)) for n, f in impl.items()}
            calls = [lambda c=c, q=q, k=k, v=v: jax.block_until_ready(c(q, k, v))
                     for c in compiled.values()]
            best = interleaved_best(args.repeats, *calls, warmup=True)
            print(f"  {label:8s}" + "".join(f"  {n} {t * 1e3:8.1f} ms" for n, t in zip(compiled, best))
                  + "".join(f"  {n}/dense {t / best[0]:.2f}x" for n, t in list(zip(compiled, best))[1:]),
                  flush=True)


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
