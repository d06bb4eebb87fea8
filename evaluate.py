r"""MIR of one or several models, layer by layer, on images paired with unrelated texts.

Examples:
  # Any Hugging Face LLaVA directory, the embedded corpus:
  python evaluate.py --hf_model=/path/to/llava-1.5-7b-hf
  # Our training workdir (config read from its checkpoint), real data:
  python evaluate.py --checkpoint=/tmp/mir_jax_runlocal \
      --images=/data/textvqa/val_images --texts=/data/cnn/stories --num_samples=100
  # Several models in one table and one plot:
  python evaluate.py --compare=/ckpt/a,/ckpt/b,/hf/llava --output_dir=/tmp/cmp

Texts are fed whole, as the published tool does: samples are truncated only where they
exceed the model's context (max_position_embeddings), and the output says how many were;
batches run longest first and are only as long as their longest row, so padding stays
small. --seq_len=N cuts at N instead. The definition of MIR is in docs/mir.md.

Outputs (in --output_dir; default: WORKDIR/mir_eval for --checkpoint, DIR_mir_eval beside
an HF directory): mir.json (config, data spec, per-layer values, overall, method, LM
loss/perplexity, timings), mir_per_layer.png, and a table on stdout. Files are written
only once an evaluation has completed (never partial results that look complete).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from mir_jax.mir import METHODS

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_model", None, "Hugging Face LLaVA directory (HF or original LLaVA layout).")
flags.DEFINE_string("checkpoint", None, "mir-jax training workdir (latest checkpoint is used).")
flags.DEFINE_list("compare", [], "Several models (workdirs or HF directories) in one table and plot.")
flags.DEFINE_string("images", "synthetic",
                    "Image folder, caption JSONL, LLaVA JSON/JSONL (conversations or questions, "
                    "e.g. llava_textvqa_val_v051_ocr.jsonl), a TFDS name as 'tfds:NAME' "
                    "(with --tfds_data_dir), or 'synthetic'.")
flags.DEFINE_string("image_folder", None,
                    "Root of the image paths in a --images JSON/JSONL file (default: its folder), "
                    "as LLaVA's --image-folder.")
flags.DEFINE_string("texts", "synthetic",
                    "Folder/file of .story, .txt or JSONL {'text'} documents, a TFDS name as "
                    "'tfds:NAME' (with --tfds_data_dir), or 'synthetic'.")
flags.DEFINE_string("tfds_data_dir", None, "data_dir for TFDS sources (nothing is downloaded).")
flags.DEFINE_string("tfds_image_split", "validation", "Split of a TFDS image source.")
flags.DEFINE_string("tfds_text_split", "test", "Split of a TFDS text source.")
flags.DEFINE_integer("num_samples", 100, "Number of (image, text) pairs.")
flags.DEFINE_enum("template", "vicuna_v1", ["vicuna_v1", "plain", "chat"],
                  "Prompt template (the MIR paper uses vicuna_v1; chat = the tokenizer's own).")
flags.DEFINE_enum("method", "auto", list(METHODS),
                  "MIR method (docs/mir.md); legacy_fast (the published fast mode in closed form) "
                  "and published_fast (its float32 iteration, literally) are NOT Fréchet distances.")
flags.DEFINE_enum("mode", "streaming", ["streaming", "exact"],
                  "streaming: constant memory (two passes); exact: hold all tokens.")
flags.DEFINE_integer("batch_size", 8, "Samples per forward pass.")
flags.DEFINE_integer("seq_len", 0, "Cut samples at this many tokens (0: the model's context, "
                     "max_position_embeddings; longer samples are truncated and counted).")
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16", "float16"],
                  "Compute dtype of the model forward (the published runs used float16); "
                  "MIR statistics are float32 either way.")
flags.DEFINE_string("mesh_shape", "-1,1,1", "Device mesh (data,fsdp,tensor); -1 = the rest.")
flags.DEFINE_enum("image_mode", None, ["pad", "crop", "resize"],
                  "Image preprocessing (default: the checkpoint's own).")
flags.DEFINE_integer("seed", 0, "Seed of the synthetic corpus (--images/--texts=synthetic).")
flags.DEFINE_string("output_dir", None, "Where mir.json and the plot go (default: WORKDIR/mir_eval "
                    "for --checkpoint, DIR_mir_eval beside an HF directory --hf_model=DIR).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process: process 0's HOST:PORT (else $JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes (else $JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index (else $JAX_PROCESS_ID).")


def _fail(message: str) -> None:
    print(f"evaluate.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def _load(path: str):
    """(name, model, preprocessing dict) for an HF directory or a mir-jax workdir."""
    from mir_jax import hf
    from mir_jax.data import ByteTokenizer, load_tokenizer

    if not os.path.exists(path):
        _fail(f"model path {path!r} does not exist")
    name = os.path.basename(os.path.normpath(path))
    is_workdir = os.path.isdir(os.path.join(path, "checkpoints"))
    if not is_workdir and os.path.exists(os.path.join(path, "config.json")):
        cfg, model = hf.load_pretrained(path)
        try:
            proc = hf.load_image_processing(path)
        except FileNotFoundError:
            proc = None
        tokenizer_files = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
        if any(os.path.exists(os.path.join(path, f)) for f in tokenizer_files):
            tokenizer = load_tokenizer(path)
        else:
            tokenizer = ByteTokenizer()
            print(f"[{name}] no tokenizer files; using the built-in byte tokenizer")
        image_size = cfg.vision.image_size
        pre = dict(tokenizer=tokenizer, image_size=image_size,
                   mean=proc.image_mean if proc else None, std=proc.image_std if proc else None,
                   image_mode=("pad" if proc is None or proc.pad_to_square
                               else "crop" if proc.do_center_crop else "resize"))
        return name, cfg, model, pre
    from mir_jax import checkpoint

    try:
        cfg, model, pre = checkpoint.load_for_evaluation(path)
    except FileNotFoundError as e:
        _fail(f"{e} (and no HF config.json + *.safetensors either)")
    return name, cfg, model, pre


def _source(spec: str, flag: str, split: str):
    """A data spec as the MIR pipeline takes it: a path, 'synthetic', or 'tfds:NAME'."""
    if spec.startswith("tfds:"):
        from mir_jax.data import TFDSSource
        from mir_jax.data.errors import DataError

        if not FLAGS.tfds_data_dir:
            _fail(f"--{flag}=tfds:NAME needs --tfds_data_dir (nothing is downloaded)")
        try:
            return TFDSSource(spec[5:], data_dir=FLAGS.tfds_data_dir, split=split)
        except DataError as e:
            _fail(f"--{flag}: {e}")
    if spec != "synthetic" and not os.path.exists(spec):
        _fail(f"--{flag} {spec!r} does not exist")
    return spec


def _evaluate_one(path: str, mesh):
    import jax

    from mir_jax.data import make_mir_iterator, mir_sample_lengths
    from mir_jax.data.errors import DataError
    from mir_jax.data.images import CLIP_MEAN, CLIP_STD
    from mir_jax.evaluator import evaluate_mir
    from mir_jax.models import with_compute_dtype

    name, cfg, model, pre = _load(path)
    model = with_compute_dtype(model, FLAGS.dtype)
    images = _source(FLAGS.images, "images", FLAGS.tfds_image_split)
    texts = _source(FLAGS.texts, "texts", FLAGS.tfds_text_split)
    num_image_tokens = cfg.num_image_tokens
    context = cfg.text.max_position_embeddings
    seq_len = FLAGS.seq_len or context
    text_kwargs = dict(tokenizer=pre["tokenizer"], num_samples=FLAGS.num_samples,
                       num_image_tokens=num_image_tokens, template=FLAGS.template,
                       seed=FLAGS.seed, image_folder=FLAGS.image_folder)
    try:
        lengths = mir_sample_lengths(images, texts, **text_kwargs)  # also validates the data
    except (DataError, ValueError) as e:
        _fail(str(e))
    truncated = int((lengths > seq_len).sum())
    if truncated and jax.process_index() == 0:
        cause = f"--seq_len={seq_len}" if FLAGS.seq_len else f"the model's context of {context}"
        print(f"[{name}] {truncated} of {len(lengths)} samples are longer than {cause} tokens "
              f"(longest {int(lengths.max())}) and are truncated there")
    data_kwargs = dict(
        text_kwargs, image_size=pre["image_size"], mean=pre["mean"] or CLIP_MEAN,
        std=pre["std"] or CLIP_STD, batch_size=FLAGS.batch_size, seq_len=seq_len,
        image_mode=FLAGS.image_mode or pre["image_mode"], sort_by_length=True, lengths=lengths)
    num_batches = -(-FLAGS.num_samples // FLAGS.batch_size)
    try:
        result = evaluate_mir(
            model, lambda: make_mir_iterator(images, texts, **data_kwargs),
            method=FLAGS.method, mode=FLAGS.mode, mesh=mesh, progress=FLAGS.progress,
            num_batches=num_batches)
    except (DataError, ValueError) as e:
        _fail(f"{name}: {e}")
    spec = dict(images=FLAGS.images, texts=FLAGS.texts, image_folder=FLAGS.image_folder,
                num_samples=FLAGS.num_samples, template=FLAGS.template, seed=FLAGS.seed,
                seq_len=seq_len, truncated_samples=truncated, longest_sample=int(lengths.max()),
                num_image_tokens=num_image_tokens, image_size=pre["image_size"],
                image_mode=data_kwargs["image_mode"], dtype=FLAGS.dtype)
    return name, result, spec


def _default_output_dir(paths: list[str]) -> str:
    """WORKDIR/mir_eval for one of our workdirs; DIR_mir_eval beside an HF directory."""
    first = os.path.normpath(paths[0])
    if os.path.isdir(os.path.join(first, "checkpoints")):
        return os.path.join(first, "mir_eval")
    return first + "_mir_eval"


def main(argv):
    del argv
    from mir_jax import distributed

    try:  # before anything touches a device (see mir_jax/distributed.py)
        distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    except distributed.DistributedSetupError as e:
        _fail(str(e))
    from mir_jax import compile_cache

    compile_cache.enable()  # the same evaluation again loads its compiled programs from disk
    import logging

    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.WARNING)  # orbax logs every file it touches at INFO
    logging.getLogger("orbax").setLevel(logging.WARNING)
    import jax
    import numpy as np

    from mir_jax.evaluator import plot_per_layer
    from mir_jax.sharding import make_mesh

    paths = list(FLAGS.compare)
    paths += [p for p in (FLAGS.hf_model, FLAGS.checkpoint) if p]
    if not paths:
        _fail("give a model: --hf_model=DIR, --checkpoint=WORKDIR or --compare=A,B,...")
    try:
        shape = tuple(int(s) for s in FLAGS.mesh_shape.split(","))
        mesh = make_mesh(shape) if jax.device_count() > 1 or shape != (-1, 1, 1) else None
    except ValueError as e:
        _fail(f"--mesh_shape: {e}")
    if mesh is not None and FLAGS.batch_size % (mesh.shape["data"] * mesh.shape["fsdp"]):
        _fail(f"--batch_size={FLAGS.batch_size} is not divisible by the data axes "
              f"{mesh.shape['data']}x{mesh.shape['fsdp']}")

    results, records = {}, {}
    for path in paths:
        name, result, spec = _evaluate_one(path, mesh)
        if name in results:
            name = path
        results[name] = result
        records[name] = dict(model=path, data=spec, **result.to_json())
        if jax.process_index() != 0:
            continue  # several processes compute one result; process 0 reports it
        print(f"\n== {name}: MIR over {result.num_samples} samples "
              f"({result.num_vision_tokens} vision / {result.num_text_tokens} text tokens), "
              f"method={result.method}, mode={result.mode}, dtype={FLAGS.dtype}")
        print(result.format())
        print(f"LM loss on the texts = {result.lm_loss:.4f} (perplexity {result.perplexity:.2f}); "
              f"{result.timings['total_s']:.1f} s")

    if jax.process_index() != 0:
        return
    if len(results) > 1:
        names = list(results)
        depth = max(len(r.per_layer) for r in results.values())
        print("\nlayer  " + "  ".join(f"{n[:14]:>14}" for n in names))
        for layer in range(depth):
            row = [results[n].per_layer[layer] if layer < len(results[n].per_layer) else np.nan for n in names]
            print(f"{layer + 1:>5}  " + "  ".join(f"{v:>14.6g}" for v in row))
        print("  MIR  " + "  ".join(f"{results[n].overall:>14.6f}" for n in names))

    # Written only now that every evaluation finished: no partial results that look complete.
    output_dir = FLAGS.output_dir or _default_output_dir(paths)
    os.makedirs(output_dir, exist_ok=True)
    out_json = os.path.join(output_dir, "mir.json")
    tmp = out_json + ".tmp"
    with open(tmp, "w") as f:
        json.dump(dict(flags={k: FLAGS[k].value for k in FLAGS if k in _OUR_FLAGS},
                       results=records), f, indent=2)
    os.replace(tmp, out_json)
    plot_per_layer(results, os.path.join(output_dir, "mir_per_layer.png"))
    print(f"\nwrote {out_json} and {os.path.join(output_dir, 'mir_per_layer.png')}")


_OUR_FLAGS = ("hf_model", "checkpoint", "compare", "images", "image_folder", "texts",
              "tfds_data_dir", "tfds_image_split", "tfds_text_split", "num_samples",
              "template", "method", "mode", "batch_size", "seq_len", "dtype", "mesh_shape",
              "image_mode", "seed", "output_dir")

if __name__ == "__main__":
    app.run(main)
