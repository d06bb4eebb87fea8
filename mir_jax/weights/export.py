"""A training run's weights as a self-contained Hugging Face LLaVA directory.

    python -m mir_jax.weights.export WORKDIR[@STEP] OUT_DIR [--tokenizer=DIR]

writes OUT_DIR/config.json and model.safetensors (`hf.save_pretrained`: float32,
`LlavaForConditionalGeneration`'s keys), the tokenizer files of DIR (default: the run's
`config.tokenizer` when it is a directory), and OUT_DIR/export.json: which checkpoint step it
holds, the versions that wrote it, and the training run's config (with its own versions), so
the directory says what produced it. `configs/stage0.py`'s shipped miniature base is made this
way (docs/miniature_world.md).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mir_jax import provenance
from mir_jax.weights import hf, load_weights
from mir_jax.weights.checkpoint import CheckpointError

EXPORT_FILE = "export.json"


def _plain(config) -> dict | None:
    """A run config (ConfigDict or dict) as JSON-ready data."""
    if config is None:
        return None
    as_dict = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    return json.loads(json.dumps(as_dict, default=str))


def export(path: str, out_dir: str, *, tokenizer: str | None = None) -> dict:
    """Writes the model at `path` (WORKDIR, WORKDIR@STEP or an HF directory) to `out_dir`;
    returns export.json's content. The tokenizer files come from `tokenizer`, else from the
    run's `config.tokenizer` when that is a directory (a byte tokenizer has no files)."""
    loaded = load_weights(path)
    run_config = _plain(loaded.run_config)
    if tokenizer is None and run_config and os.path.isdir(str(run_config.get("tokenizer", ""))):
        tokenizer = run_config["tokenizer"]
    if tokenizer is not None and not os.path.isdir(tokenizer):
        raise FileNotFoundError(f"--tokenizer={tokenizer}: no such directory")
    hf.save_pretrained(loaded.model, out_dir, copy_processor_from=tokenizer)
    info = {"source": {**loaded.source.to_json(), "path": os.path.basename(os.path.normpath(loaded.source.path))},
            "exported_with": provenance.versions(), "train_config": run_config}
    with open(os.path.join(out_dir, EXPORT_FILE), "w") as f:
        json.dump(info, f, indent=1)
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mir_jax.weights.export", description=__doc__.split("\n")[0])
    parser.add_argument("weights", help="a training WORKDIR, WORKDIR@STEP or an HF directory")
    parser.add_argument("out_dir", help="the HF directory to write")
    parser.add_argument("--tokenizer", default=None, help="copy this tokenizer directory's files "
                        "(default: the run's config.tokenizer when it is a directory)")
    args = parser.parse_args(argv)
    try:
        info = export(args.weights, args.out_dir, tokenizer=args.tokenizer)
    except (FileNotFoundError, CheckpointError, ValueError) as e:
        print(f"export: {e}", file=sys.stderr)
        return 1
    step = info["source"]["step"]
    print(f"wrote {args.out_dir} from {args.weights}" + (f" (step {step})" if step is not None else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
