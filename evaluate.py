r"""MIR of one or several models, layer by layer, on images paired with unrelated texts, and
the downstream scores MIR is meant to predict (captioning, VQA, POPE, multiple choice).

Examples:
  # Any Hugging Face LLaVA directory, the embedded corpus:
  python evaluate.py --hf_model=/path/to/llava-1.5-7b-hf
  # Our training workdir (config read from its checkpoint), real data:
  python evaluate.py --checkpoint=/tmp/mir_jax_runlocal \
      --images=/data/textvqa/val_images --texts=/data/cnn/stories --num_samples=100
  # A given step of it (WORKDIR@STEP; the default is the newest checkpoint that restores):
  python evaluate.py --checkpoint=/tmp/mir_jax_runlocal@200
  # Several models (or steps: /ckpt/a@500,/ckpt/a) in one table and one plot:
  python evaluate.py --compare=/ckpt/a,/ckpt/b,/hf/llava --output_dir=/tmp/cmp
  # Every evaluator on the embedded benchmark (captions, VQA, POPE, multiple choice), MIR, loss:
  python evaluate.py --checkpoint=/tmp/mir_jax_runlocal --evals=all
  # Real benchmark files, 0- and 4-shot (MM1's few-shot setting):
  python evaluate.py --hf_model=/path/to/llava-1.5-7b-hf --evals=vqa,caption --shots=0,4 \
      --vqa_data=vqav2:questions_json=/d/q.json,annotations_json=/d/a.json,image_folder=/d/val2014 \
      --caption_data=karpathy:karpathy_json=/d/dataset_coco.json,image_folder=/d/coco

Texts are fed whole, as the published tool does: samples are truncated only where they
exceed the model's context (max_position_embeddings), and the output says how many were;
batches run longest first and are only as long as their longest row, so padding stays
small. --seq_len=N cuts at N instead. The definition of MIR is in docs/mir.md.

A workdir loads parameters only (no optimizer is built) with the preprocessing it was trained
with (`mir_jax.evals.loading`); a step it does not have is one error line listing its steps.

Outputs (in --output_dir; default: WORKDIR/mir_eval for --checkpoint=WORKDIR,
WORKDIR/mir_eval_stepSTEP for WORKDIR@STEP, DIR_mir_eval beside an HF directory):
mir.json (config, data spec, per-layer values, the per-layer mean norms of the vision and
text hidden states they came from, overall, method, LM loss/perplexity, timings),
mir_per_layer.png (FD per layer; below it, those norms), and a table on stdout. Files are
written only once an evaluation has completed (never partial results that look complete).
--evals and the flags of their options make the dict the training loop reads from
`config.evals` ({KEY: {"evaluator": NAME, **options}}, `mir_jax.evals.build_evals`): the
same evaluators, built one way. Downstream evaluators (`mir_jax.evals`) add, per evaluator,
EVAL_scores.json and EVAL_predictions.jsonl (LLaVA's answer-file format), evals.json (every
score of every model) and scores.png; one table of all scores is printed. --llava_answers_dir=DIR also puts each
answer file where LLaVA's scripts open it (DIR as LLaVA's playground/data/eval, e.g.
DIR/pope/answers/MODEL.jsonl, DIR/vqav2/answers/SPLIT/MODEL/merge.jsonl) and VizWiz's EvalAI
upload where convert_vizwiz_for_submission.py writes it (DIR/vizwiz/answers_upload/MODEL.json).
--X_data takes "embedded" (the default: the embedded benchmark) or FORMAT:KEY=PATH,... with the loader's
argument names (`mir_jax/evals/datasets.py`: coco, karpathy, jsonl, vqav2, textvqa, gqa,
vizwiz, pope, scienceqa, mc_jsonl, mmbench; mmbench takes the key tsv).
"""

from __future__ import annotations

import json
import os
import sys

from absl import app, flags

from mir_jax.mir import METHODS

FLAGS = flags.FLAGS
flags.DEFINE_string("hf_model", None, "Hugging Face LLaVA directory (HF or original LLaVA layout).")
flags.DEFINE_string("checkpoint", None, "mir-jax training workdir: WORKDIR (its newest checkpoint that "
                    "restores) or WORKDIR@STEP (that step's).")
flags.DEFINE_list("compare", [], "Several models (WORKDIR, WORKDIR@STEP or HF directories) in one table "
                  "and plot.")
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
flags.DEFINE_integer("num_samples", 100, "Samples per evaluator: MIR's (image, text) pairs and each "
                     "downstream evaluator's records (the first N).")
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
                    "for --checkpoint=WORKDIR, WORKDIR/mir_eval_stepSTEP for WORKDIR@STEP, "
                    "DIR_mir_eval beside an HF directory --hf_model=DIR).")
flags.DEFINE_bool("progress", True, "Show a progress bar.")
flags.DEFINE_list("evals", ["mir"], "Evaluators: mir, loss, caption, vqa, pope, multiple_choice, "
                  "or all (those six); also sample_captions (a few greedy captions, printed).")
flags.DEFINE_string("caption_data", "embedded", "Caption data: 'embedded' or FORMAT:KEY=PATH,...")
flags.DEFINE_string("vqa_data", "embedded", "VQA data: 'embedded' or FORMAT:KEY=PATH,...")
flags.DEFINE_string("pope_data", "embedded", "POPE data: 'embedded' or pope:jsonl=PATH,image_folder=DIR")
flags.DEFINE_string("mc_data", "embedded", "Multiple-choice data: 'embedded' or FORMAT:KEY=PATH,...")
flags.DEFINE_enum("scene", "image", ["image", "text", "blank"],
                  "Embedded benchmark only: show each scene as the image, told in words before the "
                  "question with no image (what a base LLM reads), or as a blank grey image (the "
                  "control that the benchmark needs the image).")
flags.DEFINE_string("score_answers", None, "Re-score this LLaVA or lmms-eval answer file with our scorers, "
                    "no model loaded, against the one --vqa_data/--pope_data/--mc_data/--caption_data "
                    "file given (mir_jax/evals/rescore.py); scores to --output_dir if set.")
flags.DEFINE_string("llava_answers_dir", None, "Also write each evaluator's answer file where LLaVA-1.5's "
                    "eval scripts read it, DIR standing for LLaVA's playground/data/eval: "
                    "vqav2|gqa/answers/SPLIT/MODEL/merge.jsonl, textvqa|pope|vizwiz|scienceqa/answers/"
                    "MODEL.jsonl, mmbench/answers/SPLIT/MODEL.jsonl, and VizWiz's EvalAI upload "
                    "vizwiz/answers_upload/MODEL.json as convert_vizwiz_for_submission.py writes it "
                    "(mir_jax/evals/llava_answers.py); embedded and caption data get none.")
flags.DEFINE_string("hidden_states", None, "MIR of hidden states dumped to safetensors (one file or a "
                    "directory of shards; layout: docs/mir.md section 10, tools/dump_hidden_states.py), "
                    "no model loaded; --method and --mode apply.")
flags.DEFINE_enum("uncertainty", None, ["jackknife"],
                  "MIR's standard error and 95 % interval over groups of samples, per layer and overall "
                  "(needs --mode=exact; docs/mir.md section 9); with --compare, the paired interval "
                  "of each difference.")
flags.DEFINE_integer("uncertainty_groups", 10, "--uncertainty: number of sample groups (2 to --num_samples).")
flags.DEFINE_list("shots", ["0"], "In-context examples for caption and vqa (e.g. 0,4,8).")
flags.DEFINE_integer("max_new_tokens", 0, "Generated tokens per answer (0: each evaluator's default).")
flags.DEFINE_string("prompt_template", None, "Prompt template of the downstream prompts (default: the "
                    "model's own: its training data's for a workdir, vicuna_v1 for HF).")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-process: process 0's HOST:PORT (else $JAX_COORDINATOR_ADDRESS).")
flags.DEFINE_integer("num_processes", None, "Multi-process: number of processes (else $JAX_NUM_PROCESSES).")
flags.DEFINE_integer("process_id", None, "Multi-process: this process's index (else $JAX_PROCESS_ID).")


def _fail(message: str) -> None:
    print(f"evaluate.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def _load(path: str):
    """An `EvalModel` for an HF directory, a mir-jax WORKDIR or WORKDIR@STEP (one-line error
    otherwise: no such path or step, nothing restores, a preprocessor this pipeline cannot do)."""
    from mir_jax.evals.loading import load_model
    from mir_jax.weights.checkpoint import CheckpointError

    try:
        return load_model(path, template=FLAGS.prompt_template, image_mode=FLAGS.image_mode)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        _fail(str(e))


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


def _data_spec(value: str, flag: str):
    """'embedded', or FORMAT:KEY=PATH,KEY=PATH -> {"format": FORMAT, KEY: PATH, ...}."""
    if value in ("", "embedded"):
        return "embedded"
    fmt, _, rest = value.partition(":")
    spec = {"format": fmt}
    for part in filter(None, rest.split(",")):
        key, eq, path = part.partition("=")
        if not eq:
            _fail(f"--{flag}={value!r}: expected FORMAT:KEY=PATH,KEY=PATH (got {part!r})")
        spec[key] = path
    return spec


def _eval_entries(names: list[str]) -> dict[str, dict]:
    """The evaluations asked for, in the one form the training loop's `config.evals` has
    ({KEY: {"evaluator": NAME, **options}}, `mir_jax.evals.build_evals`), options from the
    flags: MIR first, each few-shot count of caption and vqa its own entry ("vqa_4shot")."""
    try:
        shots = [int(s) for s in FLAGS.shots]
    except ValueError:
        _fail(f"--shots={','.join(FLAGS.shots)}: expected integers, e.g. 0,4,8")
    data_flags = {"caption": "caption_data", "vqa": "vqa_data", "pope": "pope_data",
                  "multiple_choice": "mc_data"}
    entries = {}
    if "mir" in names:
        entries["mir"] = dict(
            images=_source(FLAGS.images, "images", FLAGS.tfds_image_split),
            texts=_source(FLAGS.texts, "texts", FLAGS.tfds_text_split), image_folder=FLAGS.image_folder,
            num_samples=FLAGS.num_samples, template=FLAGS.template, method=FLAGS.method, mode=FLAGS.mode,
            batch_size=FLAGS.batch_size, seq_len=FLAGS.seq_len, seed=FLAGS.seed, progress=FLAGS.progress,
            uncertainty=FLAGS.uncertainty, num_groups=FLAGS.uncertainty_groups)
    for name in (n for n in names if n != "mir"):
        options = dict(num_samples=FLAGS.num_samples, seed=FLAGS.seed)
        flag = data_flags.get(name)
        if flag:  # a generating evaluator (loss reads the embedded held-out mixture)
            options.update(data=_data_spec(FLAGS[flag].value, flag), progress=FLAGS.progress)
            if FLAGS.max_new_tokens:
                options["max_new_tokens"] = FLAGS.max_new_tokens
            if FLAGS.scene != "image":
                options["scene"] = FLAGS.scene
        for k in (shots if name in ("caption", "vqa") else [0]):
            entries[name + (f"_{k}shot" if k else "")] = {"evaluator": name, **options, **({"shots": k} if k else {})}
    return entries


def _mir_record(result, name: str, path: str, weights: dict) -> dict:
    """mir.json's record of one model's MIR evaluation (`MirEvaluator`'s result): the data spec
    from the flags and what was fed, the evaluation's fields."""
    import jax

    data = result.details["data"]
    if data["truncated_samples"] and jax.process_index() == 0:
        cause = f"--seq_len={data['seq_len']}" if FLAGS.seq_len else f"the model's context of {data['seq_len']}"
        print(f"[{name}] {data['truncated_samples']} of {FLAGS.num_samples} samples are longer than "
              f"{cause} tokens (longest {data['longest_sample']}) and are truncated there")
    spec = dict(images=FLAGS.images, texts=FLAGS.texts, image_folder=FLAGS.image_folder,
                num_samples=FLAGS.num_samples, template=FLAGS.template, seed=FLAGS.seed,
                seq_len=data["seq_len"], truncated_samples=data["truncated_samples"],
                longest_sample=data["longest_sample"], num_image_tokens=data["num_image_tokens"],
                image_size=data["image_size"], image_mode=data["image_mode"], dtype=FLAGS.dtype)
    return dict(model=path, weights=weights, data=spec, **result.details["evaluation"].to_json())


def _default_output_dir(paths: list[str]) -> str:
    """WORKDIR/mir_eval for one of our workdirs (WORKDIR/mir_eval_stepSTEP for WORKDIR@STEP: a
    step's results do not overwrite the newest's); DIR_mir_eval beside an HF directory."""
    from mir_jax.weights import is_workdir
    from mir_jax.weights.parts import split_step

    first, step = split_step(paths[0])
    first = os.path.normpath(first)
    if is_workdir(first):
        return os.path.join(first, "mir_eval" if step is None else f"mir_eval_step{step}")
    return first + "_mir_eval"


def main(argv):
    del argv
    if FLAGS.score_answers:  # no model, no devices: mir_jax/evals/rescore.py
        from mir_jax.evals.rescore import rescore_cli

        sys.exit(rescore_cli(FLAGS.score_answers, {
            task: _data_spec(FLAGS[flag].value, flag) for task, flag in (
                ("vqa", "vqa_data"), ("pope", "pope_data"), ("multiple_choice", "mc_data"),
                ("caption", "caption_data"))}, FLAGS.output_dir))
    if FLAGS.hidden_states:  # no model: mir_jax/mir/hidden_states.py
        return _evaluate_hidden_states(FLAGS.hidden_states)
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

    from mir_jax.sharding import data_parallel_size, make_mesh

    paths = list(FLAGS.compare)
    paths += [p for p in (FLAGS.hf_model, FLAGS.checkpoint) if p]
    if not paths:
        _fail("give a model: --hf_model=DIR, --checkpoint=WORKDIR or --compare=A,B,...")
    if FLAGS.uncertainty and FLAGS.mode != "exact":
        _fail(f"--uncertainty={FLAGS.uncertainty} needs --mode=exact (the streaming accumulator keeps no "
              "per-group statistics)")
    try:
        shape = tuple(int(s) for s in FLAGS.mesh_shape.split(","))
        mesh = make_mesh(shape) if jax.device_count() > 1 or shape != (-1, 1, 1) else None
    except ValueError as e:
        _fail(f"--mesh_shape: {e}")
    if FLAGS.batch_size % data_parallel_size(mesh):
        _fail(f"--batch_size={FLAGS.batch_size} is not divisible by the mesh's "
              f"{data_parallel_size(mesh)} data-parallel shards")

    from mir_jax.evals import ALL, REGISTRY, build_evals, write_result

    names = list(ALL) if FLAGS.evals == ["all"] else list(FLAGS.evals)
    unknown = sorted(set(names) - set(REGISTRY))
    if unknown:
        _fail(f"--evals: unknown evaluator(s) {unknown}; known: {', '.join(ALL)} (or all), "
              f"{', '.join(sorted(set(REGISTRY) - set(ALL)))}")
    try:
        evaluators = [(key, evaluator) for key, _, evaluator in build_evals(_eval_entries(names))]
    except ValueError as e:
        _fail(str(e))
    generative = sorted(n for n in names if REGISTRY[n].split != "eval")
    if generative and jax.process_count() > 1:
        _fail(f"--evals: {', '.join(generative)} generate in one process (several processes: "
              "--evals=mir,loss; one process can still use all its local devices)")

    from mir_jax import provenance
    from mir_jax.data.errors import DataError
    from mir_jax.models import with_compute_dtype

    main_process = jax.process_index() == 0
    if main_process:
        print(provenance.summary())
    results, records, scores, outputs, weights = {}, {}, {}, {}, {}
    for path in paths:
        handle = _load(path)
        handle.model = with_compute_dtype(handle.model, FLAGS.dtype)
        handle.mesh = mesh
        name = handle.name if handle.name not in scores else path
        handle.name = name
        scores[name] = {}
        weights[name] = handle.weights.to_json()
        if main_process:
            print(f"[{name}] weights: {handle.weights.describe()}")
            if handle.weights.skipped:
                print(f"evaluate.py: warning: {name}: the newest checkpoint does not restore; "
                      f"evaluating step {handle.weights.step} instead", file=sys.stderr)
        for key, evaluator in evaluators:
            try:
                out = evaluator.run(handle)
            except (DataError, ValueError) as e:
                _fail(f"{name}: {e}" if evaluator.name == "mir" else f"{name}: {key}: {e}")
            out.evaluator = key
            scores[name].update({f"{key}/{k}": v for k, v in out.scores.items() if k != "num_samples"})
            if evaluator.name == "mir":  # the table, mir.json and the per-layer plot
                result = results[name] = out.details["evaluation"]
                records[name] = _mir_record(out, name, path, weights[name])
                if main_process:  # several processes compute one result; process 0 reports
                    print(f"\n== {name}: MIR over {result.num_samples} samples "
                          f"({result.num_vision_tokens} vision / {result.num_text_tokens} text tokens, "
                          f"rows of up to {out.details['data']['seq_len']} tokens), "
                          f"method={result.method}, mode={result.mode}, dtype={FLAGS.dtype}")
                    print(result.format())
                    print(f"LM loss on the texts = {result.lm_loss:.4f} (perplexity {result.perplexity:.2f}); "
                          f"{result.timings['total_s']:.1f} s")
                continue
            outputs[(name, key)] = out
            if main_process:
                shown = ", ".join(f"{k} {v:.4g}" for k, v in out.scores.items()) or "\n" + evaluator.report(out, key)
                print(f"[{name}] {key}: {shown}")

    if not main_process:
        return
    if len(results) > 1:
        names_ = list(results)
        depth = max(len(r.per_layer) for r in results.values())
        print("\nlayer  " + "  ".join(f"{n[:14]:>14}" for n in names_))
        for layer in range(depth):
            row = [results[n].per_layer[layer] if layer < len(results[n].per_layer) else np.nan for n in names_]
            print(f"{layer + 1:>5}  " + "  ".join(f"{v:>14.6g}" for v in row))
        print("  MIR  " + "  ".join(f"{results[n].overall:>14.6f}" for n in names_))
        comparisons = _paired_differences(results)
        for c in comparisons:
            lo, hi = c["overall_interval"]
            verdict = "the difference is larger than the choice of samples explains" if c["excludes_zero"] \
                else "within what the choice of samples explains"
            print(f"{c['a']} - {c['b']}: MIR {c['overall']:+.6f}, paired 95 % interval "
                  f"[{lo:+.6f}, {hi:+.6f}]: {verdict}")
            records[c["a"]].setdefault("paired_differences", {})[c["b"]] = c
    downstream = {key: evaluator.options for key, evaluator in evaluators if evaluator.name != "mir"}
    if downstream and any(scores.values()):
        print("\n" + _score_table(scores))

    # Written only now that every evaluation finished: no partial results that look complete.
    output_dir = FLAGS.output_dir or _default_output_dir(paths)
    os.makedirs(output_dir, exist_ok=True)
    flag_values = {f.name: f.value for f in FLAGS.get_flags_for_module(sys.modules[__name__])}
    written = _write_mir(results, records, output_dir) if results else []
    if downstream:
        llava_files = []
        for (name, key), out in outputs.items():
            write_result(out, output_dir, prefix=f"{name}_" if len(scores) > 1 else "")
            if FLAGS.llava_answers_dir:
                from mir_jax.evals.llava_answers import write_llava_answers, write_llava_upload

                options = downstream[key]
                for write in (write_llava_answers, write_llava_upload):
                    written_at = write(out.predictions, options.get("data"), name, FLAGS.llava_answers_dir,
                                       int(options.get("shots") or 0))
                    llava_files += [written_at] if written_at else []
        if FLAGS.llava_answers_dir:
            print("LLaVA answer files: " + (", ".join(llava_files) if llava_files else
                  "none (no evaluator read a benchmark file that LLaVA's scripts score)"))
        evals_json = os.path.join(output_dir, "evals.json")
        with open(evals_json + ".tmp", "w") as f:
            json.dump(dict(flags=flag_values, versions=provenance.versions(), weights=weights,
                           scores=scores), f, indent=2)
        os.replace(evals_json + ".tmp", evals_json)
        png = _plot_scores(scores, os.path.join(output_dir, "scores.png"))
        written += [evals_json, png, f"{len(outputs)} *_scores.json / *_predictions.jsonl"]
    print(f"\nwrote {' and '.join(written)} in {output_dir}" if len(written) > 2
          else f"\nwrote {' and '.join(written)}")


def _paired_differences(results: dict) -> list[dict]:
    """For every pair of models evaluated with --uncertainty on the same samples: the overall
    MIR difference a - b and its paired jackknife interval (the same sample groups left out of
    both), as JSON-ready dicts; [] without intervals."""
    import itertools

    from mir_jax.mir import paired_difference

    if not all(r.interval for r in results.values()):
        return []
    out = []
    for a, b in itertools.combinations(results, 2):
        d = paired_difference(results[a].result(), results[b].result())
        out.append(dict(a=a, b=b, overall=float(d.overall), overall_se=float(d.overall_se),
                        overall_interval=[float(x) for x in d.overall_interval],
                        excludes_zero=bool(d.excludes_zero)))
    return out


def _write_mir(results: dict, records: dict, output_dir: str) -> list[str]:
    """mir.json (flags, versions, one record per model) and mir_per_layer.png; their paths."""
    from mir_jax import provenance
    from mir_jax.evals.mir import plot_per_layer

    flag_values = {f.name: f.value for f in FLAGS.get_flags_for_module(sys.modules[__name__])}
    out_json = os.path.join(output_dir, "mir.json")
    with open(out_json + ".tmp", "w") as f:
        json.dump(dict(flags=flag_values, versions=provenance.versions(), results=records), f, indent=2)
    os.replace(out_json + ".tmp", out_json)
    plot_per_layer(results, os.path.join(output_dir, "mir_per_layer.png"))
    return [out_json, os.path.join(output_dir, "mir_per_layer.png")]


def _evaluate_hidden_states(path: str) -> None:
    """MIR of dumped hidden states (no model): the table, mir.json and the plot as for a model.
    Intervals when an --uncertainty flag asks for them (exact mode only; streaming refuses)."""
    import numpy as np

    from mir_jax import provenance
    from mir_jax.evals.mir import MIREvaluation, interval_fields, norm_fields
    from mir_jax.mir.hidden_states import hidden_states_mir

    print(provenance.summary())
    try:
        out = hidden_states_mir(path, method=FLAGS.method, mode=FLAGS.mode, uncertainty=FLAGS.uncertainty,
                                num_groups=FLAGS.uncertainty_groups)
    except ValueError as e:  # HiddenStatesError: one line naming the file and the sample
        _fail(f"--hidden_states: {e}")
    name = os.path.basename(os.path.normpath(path))
    result = out.result
    evaluation = MIREvaluation(
        per_layer=np.asarray(result.per_layer), overall=float(result.overall), method=out.method,
        mode=out.mode, num_samples=out.num_samples, num_vision_tokens=out.num_vision_tokens,
        num_text_tokens=out.num_text_tokens, lm_loss=None, perplexity=None, timings=out.timings,
        diagnostics=out.diagnostics,
        interval=interval_fields(result, out.num_groups) if result.per_layer_se is not None else {},
        **norm_fields(result))
    record = dict(hidden_states=path, dtype=out.index.dtype, **evaluation.to_json())
    print(f"\n== {name}: MIR over {out.num_samples} samples ({out.num_vision_tokens} vision / "
          f"{out.num_text_tokens} text tokens) from hidden states ({out.index.dtype}), "
          f"method={out.method}, mode={out.mode}")
    print(evaluation.format())
    output_dir = FLAGS.output_dir or os.path.normpath(path) + "_mir_eval"
    os.makedirs(output_dir, exist_ok=True)
    print(f"\nwrote {' and '.join(_write_mir({name: evaluation}, {name: record}, output_dir))}")


def _score_table(scores: dict[str, dict[str, float]]) -> str:
    """One row per score, one column per model."""
    models = list(scores)
    keys = sorted({k for s in scores.values() for k in s})
    width = max((len(k) for k in keys), default=len("score"))
    lines = [f"{'score':<{width}}  " + "  ".join(f"{m[:14]:>14}" for m in models)]
    for k in keys:
        lines.append(f"{k:<{width}}  " + "  ".join(
            f"{scores[m][k]:>14.4f}" if k in scores[m] else f"{'-':>14}" for m in models))
    return "\n".join(lines)


def _plot_scores(scores: dict[str, dict[str, float]], path: str) -> str:
    """Grouped bars of each evaluator's headline score per model; a zero shows as "0"."""
    from mir_jax.evals.score_plot import plot_scores

    return plot_scores(scores, path)


if __name__ == "__main__":
    app.run(main)
