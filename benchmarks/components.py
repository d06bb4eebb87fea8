"""Forward + backward of each building block of the train-step model, ours (jax.jit) against
the PyTorch equivalent with the same weights, float32, timed interleaved in one process.

The model is benchmarks/train_step.py's "small" preset (CLIP ViT 4x256 at 224 px, Llama 4x512,
vocab 32k) at batch 8, length 512; every block gets the activations it sees in that step. Each
row times one call of value-and-gradient (w.r.t. the block's parameters and its input, against a
fixed random cotangent) on our side, and forward + `backward()` on torch's; the AdamW row times
global-norm clipping + the AdamW update over all the model's parameters on both sides.
Prints one table: best ms of each and torch ms / ours ms (> 1: ours is faster).

    python benchmarks/components.py [--repeats 5] [--quick] [--only dense,attention]
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time

import numpy as np
from timing import interleaved_best
from train_step import OPT, hf_config, make_batch

from mir_jax.allocator import preloaded


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=512)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="3 repeats (about a minute of timing)")
    ap.add_argument("--only", default="", help="comma-separated row-name prefixes to run")
    args = ap.parse_args()
    repeats = 3 if args.quick else args.repeats
    only = tuple(s.strip() for s in args.only.split(",") if s.strip())

    import jax
    import jax.numpy as jnp
    import torch
    import torch.nn.functional as F
    from flax import nnx
    from transformers import LlavaForConditionalGeneration
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    from mir_jax.models.forward import token_losses
    from mir_jax.models.layers import apply_rope, attention, rope_cos_sin, text_mask
    from mir_jax.sharding import make_mesh
    from mir_jax.train.step import Stepper
    from mir_jax.weights import load_weights

    vocab, image_token = 32000, 31999
    hcfg = hf_config("small", vocab, image_token)
    hcfg._attn_implementation = "sdpa"
    b, s = args.batch, args.length
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        hf = LlavaForConditionalGeneration(hcfg)
        hf.save_pretrained(tmp)
        cfg, model = load_weights(tmp)[:2]
    hf.train()
    tcfg, vcfg = cfg.text, cfg.vision
    d, f, h, hd = tcfg.hidden_size, tcfg.intermediate_size, tcfg.num_heads, tcfg.head_dim
    dv, fv, hv = vcfg.hidden_size, vcfg.intermediate_size, vcfg.num_heads
    tv = vcfg.num_patches + 1
    rng = np.random.default_rng(0)

    def first_layer(stack):
        graphdef, state = nnx.split(stack)
        return nnx.merge(graphdef, jax.tree.map(lambda a: a[0], state))

    dec, vit = first_layer(model.language_model.layers), first_layer(model.vision_tower.layers)
    t_dec = hf.model.language_model.layers[0]
    t_vit = hf.model.vision_tower.encoder.layers[0]

    rows: list[tuple[str, float, float]] = []

    def randn(*shape):
        return rng.standard_normal(shape).astype(np.float32)

    def bench(name, ours_fn, ours_args, torch_fn):
        """ours_fn(*ours_args) -> output (differentiated w.r.t. all args); torch_fn() -> scalar
        loss after backward."""
        if only and not name.startswith(only):
            return
        out_shape = jax.eval_shape(ours_fn, *ours_args)
        ct = jnp.asarray(rng.standard_normal(out_shape.shape).astype(np.float32))

        @jax.jit
        def vg(args):
            return jax.value_and_grad(lambda a: jnp.vdot(ours_fn(*a), ct))(args)

        def ours():
            jax.block_until_ready(vg(ours_args))

        ours_s, torch_s = interleaved_best(repeats, ours, torch_fn, warmup=True)
        rows.append((name, ours_s * 1e3, torch_s * 1e3))
        print(f"  {name:<44} ours {ours_s * 1e3:8.1f} ms  torch {torch_s * 1e3:8.1f} ms  "
              f"{torch_s / ours_s:5.2f}x", flush=True)

    def torch_step(module_fn, inputs, params):
        """A torch forward + backward callable: module_fn(*inputs) against a fixed cotangent."""
        inputs = [x.requires_grad_(True) if x.is_floating_point() else x for x in inputs]
        with torch.no_grad():
            ct = torch.randn_like(module_fn(*inputs))

        def run():
            for p in list(params) + [x for x in inputs if x.requires_grad]:
                p.grad = None
            out = module_fn(*inputs)
            loss = (out * ct).sum()
            loss.backward()
            return loss

        return run

    def split(module):
        graphdef, state = nnx.split(module)
        return (lambda st, *xs: nnx.merge(graphdef, st)(*xs)), state

    def bench_module(name, ours, theirs, x):
        """One-input block: our nnx module against the torch module holding the same weights."""
        fn, st = split(ours)
        bench(name, fn, (st, jnp.asarray(x)), torch_step(theirs, [torch.tensor(x)], theirs.parameters()))

    # --- Dense at every shape the model uses (rows x in -> out) ------------------------------
    n_txt, n_vis = b * s, b * tv
    dense_shapes = [
        ("llm q/k/v/o", n_txt, d, d, False), ("llm gate/up", n_txt, d, f, False),
        ("llm down", n_txt, f, d, False), ("vit q/k/v/out", n_vis, dv, dv, True),
        ("vit fc1", n_vis, dv, fv, True), ("vit fc2", n_vis, fv, dv, True),
        ("patch embed", b * vcfg.num_patches, vcfg.patch_size**2 * 3, dv, False),
        ("connector fc1", b * vcfg.num_patches, dv, d, True),
    ]
    from mir_jax.models.layers import Dense

    for label, n, i, o, bias in dense_shapes:
        layer = Dense(i, o, ("embed", "mlp"), bias=bias, dtype=jnp.float32, rngs=nnx.Rngs(0))
        lin = torch.nn.Linear(i, o, bias=bias)
        with torch.no_grad():
            lin.weight.copy_(torch.tensor(np.asarray(layer.kernel[...]).T))
        x = randn(n, i)
        fn, st = split(layer)
        bench(f"dense {label} [{n}x{i}]x[{i}x{o}]", fn, (st, jnp.asarray(x)),
              torch_step(lin, [torch.tensor(x)], lin.parameters()))

    # --- attention ------------------------------------------------------------------------
    seg = jnp.ones((b, s), jnp.int32)
    mask = text_mask(None, seg)  # as the train step builds it (segment ids, all ones)
    q, k, v = randn(b, s, h, hd), randn(b, s, h, hd), randn(b, s, h, hd)
    bench(f"attention causal [{b},{s},{h},{hd}]",
          lambda q, k, v: attention(q, k, v, mask, implementation=cfg.attention),
          tuple(jnp.asarray(a) for a in (q, k, v)),
          torch_step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2),
                     [torch.tensor(a).transpose(1, 2).contiguous() for a in (q, k, v)], []))
    qv, kv_, vv = randn(b, tv, hv, dv // hv), randn(b, tv, hv, dv // hv), randn(b, tv, hv, dv // hv)
    bench(f"attention vit [{b},{tv},{hv},{dv // hv}]", lambda q, k, v: attention(q, k, v, None, implementation=cfg.attention),
          tuple(jnp.asarray(a) for a in (qv, kv_, vv)),
          torch_step(lambda q, k, v: F.scaled_dot_product_attention(q, k, v).transpose(1, 2),
                     [torch.tensor(a).transpose(1, 2).contiguous() for a in (qv, kv_, vv)], []))

    # --- RoPE (q and k of one layer, cos/sin from the positions as the model computes them) --
    positions = jnp.broadcast_to(jnp.arange(s, dtype=jnp.int32), (b, s))
    rot = hf.model.language_model.rotary_emb
    t_pos = torch.arange(s)[None].expand(b, s)

    def ours_rope(q, k):
        cos, sin = rope_cos_sin(positions, hd, tcfg.rope_theta)
        return jnp.stack([apply_rope(q, cos, sin), apply_rope(k, cos, sin)])

    def torch_rope(q, k):
        cos, sin = rot(q, t_pos)
        return torch.stack(apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin))

    bench(f"rope q+k [{b},{s},{h},{hd}]", ours_rope, (jnp.asarray(q), jnp.asarray(k)),
          torch_step(torch_rope, [torch.tensor(q), torch.tensor(k)], []))

    # --- norms -------------------------------------------------------------------------------
    x_txt, x_vis = randn(b, s, d), randn(b, tv, dv)
    bench_module(f"rmsnorm [{b},{s},{d}]", dec.input_layernorm, t_dec.input_layernorm, x_txt)
    bench_module(f"layernorm [{b},{tv},{dv}]", vit.layer_norm1, t_vit.layer_norm1, x_vis)

    # --- MLPs --------------------------------------------------------------------------------
    bench_module(f"swiglu mlp [{b},{s},{d}] f={f}", dec.mlp, t_dec.mlp, x_txt)
    bench_module(f"vit mlp [{b},{tv},{dv}] f={fv}", vit.mlp, t_vit.mlp, x_vis)

    # --- whole layers ------------------------------------------------------------------------
    dg, dst = nnx.split(dec)
    modality = jnp.zeros((b, s), bool)

    def ours_dec(st, x):
        cos, sin = rope_cos_sin(positions, hd, tcfg.rope_theta)
        return nnx.merge(dg, st)(x, cos, sin, mask, modality)[0]

    def torch_dec(x):
        out = t_dec(x, attention_mask=None, position_ids=t_pos, position_embeddings=rot(x, t_pos))
        return out[0] if isinstance(out, tuple) else out

    bench(f"decoder layer [{b},{s},{d}]", ours_dec, (dst, jnp.asarray(x_txt)),
          torch_step(torch_dec, [torch.tensor(x_txt)], t_dec.parameters()))

    def torch_vit(x):
        out = t_vit(x, None)
        return out[0] if isinstance(out, tuple) else out

    fn, st = split(vit)
    bench(f"vit layer [{b},{tv},{dv}]", fn, (st, jnp.asarray(x_vis)),
          torch_step(torch_vit, [torch.tensor(x_vis)], t_vit.parameters()))

    # --- whole stacks (scanned layers; what the layer rows miss: the scan and its layouts) ----
    lm_g, lm_st = nnx.split(model.language_model)

    def ours_llm(st, x):
        return nnx.merge(lm_g, st).decode(x, positions, mask, modality)[0]

    t_lm = hf.model.language_model

    def torch_llm(x):
        pe = rot(x, t_pos)
        for layer in t_lm.layers:
            x = layer(x, attention_mask=None, position_ids=t_pos, position_embeddings=pe)
            x = x[0] if isinstance(x, tuple) else x
        return t_lm.norm(x)

    bench(f"llm {tcfg.num_layers} layers + norm [{b},{s},{d}]", ours_llm, (lm_st, jnp.asarray(x_txt)),
          torch_step(torch_llm, [torch.tensor(x_txt)], t_lm.parameters()))

    px = make_batch(b, s, vcfg.num_patches, vocab, image_token)["pixel_values"][:, 0]
    vt_g, vt_st = nnx.split(model.vision_tower)
    layer_idx = cfg.feature_layers

    def ours_tower(st, px):
        return nnx.merge(vt_g, st).hidden_states(px, layer_idx)[0]

    t_tower = hf.model.vision_tower

    def torch_tower(px):
        return t_tower(px, output_hidden_states=True).hidden_states[layer_idx[0]]

    bench(f"vision tower to layer {layer_idx[0]} [{b},224,224,3]", ours_tower, (vt_st, jnp.asarray(px)),
          torch_step(torch_tower, [torch.tensor(px).permute(0, 3, 1, 2).contiguous()], t_tower.parameters()))

    # --- head + loss (the step's loss: summed next-token CE over the text positions) ---------
    batch = make_batch(b, s, vcfg.num_patches, vocab, image_token)
    labels = jnp.asarray(batch["labels"])
    lm = model.language_model
    w_head = lm.lm_head[...]

    def ours_head(w, hid):
        logits = jnp.einsum("bsd,dv->bsv", hid, w, preferred_element_type=jnp.float32)
        ce, _, valid = token_losses(logits, labels)
        return jnp.sum(ce * valid)

    t_labels = torch.tensor(batch["labels"], dtype=torch.long)
    head = hf.lm_head

    def torch_head(hid):
        logits = head(hid)
        return F.cross_entropy(logits[:, :-1].reshape(-1, vocab), t_labels[:, 1:].reshape(-1),
                               ignore_index=-100, reduction="sum")

    bench(f"head + CE [{b * s}x{d}]x[{d}x{vocab}]", ours_head, (w_head, jnp.asarray(x_txt)),
          torch_step(torch_head, [torch.tensor(x_txt)], head.parameters()))

    # --- AdamW update over all parameters (clip by global norm + AdamW + apply) --------------
    if not only or "adamw".startswith(only) or any(o.startswith("adamw") for o in only):
        recipe = {"connector": True, "vision": "all", "llm": "all"}
        st_ = Stepper(cfg, recipe, OPT, 1000, make_mesh((1, -1, 1)))
        state, _ = st_.init(0, nnx.state(model, nnx.Param))
        params, opt_state = state["params"], state["opt_state"]
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape).astype(np.float32) * 1e-3), params)

        @jax.jit
        def update(params, opt_state, grads):
            import optax

            updates, opt_state = st_.tx.update(grads, opt_state, params)
            return optax.apply_updates(params, updates), opt_state

        carry = {"p": params, "o": opt_state}

        def ours_adam():
            carry["p"], carry["o"] = update(carry["p"], carry["o"], grads)
            jax.block_until_ready(carry["p"])

        t_params = list(hf.parameters())
        for p in t_params:
            p.grad = torch.randn_like(p) * 1e-3
        opt = torch.optim.AdamW(t_params, lr=OPT["lr"], betas=(OPT["b1"], OPT["b2"]), eps=OPT["eps"],
                                weight_decay=OPT["weight_decay"])

        def torch_adam():
            torch.nn.utils.clip_grad_norm_(t_params, OPT["clip_norm"])
            opt.step()

        n_params = sum(p.numel() for p in t_params)
        ours_s, torch_s = interleaved_best(repeats, ours_adam, torch_adam, warmup=True)
        name = f"adamw + clip ({n_params / 1e6:.1f}M params)"
        rows.append((name, ours_s * 1e3, torch_s * 1e3))
        print(f"  {name:<44} ours {ours_s * 1e3:8.1f} ms  torch {torch_s * 1e3:8.1f} ms  "
              f"{torch_s / ours_s:5.2f}x", flush=True)

    print(f"\n{platform.processor() or platform.machine()}, {os.cpu_count()} cores, jax {jax.__version__}, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), best of {repeats}, "
          f"{time.strftime('%Y-%m-%d %H:%M')}, load {os.getloadavg()[0]:.1f}, allocator {preloaded()}")
    print("\n| component (forward + backward) | ours ms | torch ms | torch / ours |\n|---|---:|---:|---:|")
    for name, o, t in rows:
        print(f"| {name} | {o:.1f} | {t:.1f} | {t / o:.2f}x |")


if __name__ == "__main__":
    from timing import print_versions

    print_versions()  # the install beside every figure below
    main()
