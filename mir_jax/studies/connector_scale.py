"""Does MIR measure alignment or scale? One model, its connector's output multiplied by a factor.

Scaling the connector's output changes the image tokens' norm, not their direction: a measure
of alignment would move little with the factor, one dominated by scale would follow it. For
each factor this records MIR overall and per layer, the mean norms of the vision and text
hidden states per layer, and the held-out loss. docs/miniature_world.md reports the measurement.

    python -m mir_jax.studies.connector_scale WEIGHTS --scales=0.25,0.5,1,2,4 --output_dir=DIR

WEIGHTS is a training workdir (its held-out data gives the loss) or an HF directory (the
embedded held-out data). Writes DIR/connector_scale.json and DIR/connector_scale.png.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
from flax import nnx

RESULT_FILE = "connector_scale.json"
PLOT_FILE = "connector_scale.png"


class ScaledConnector(nnx.Module):
    """`connector`'s output [B, K, D_llm] times `factor` (a static float: one program per factor)."""

    def __init__(self, connector: nnx.Module, factor: float):
        self.connector = connector
        self.factor = float(factor)

    def __call__(self, x):
        return self.factor * self.connector(x)


def measure(eval_model, scales, *, num_samples: int = 100, loss_data=None, loss_samples: int = 128,
            progress: bool = False) -> list[dict]:
    """One record per factor of `scales`: {"scale", "mir", "mir_per_layer" [L],
    "vision_norm_per_layer" [L], "text_norm_per_layer" [L], "loss"}.

    eval_model: a `mir_jax.evals.EvalModel`; its LLaVA model's connector is wrapped in turn and
    restored before returning. loss_data: the held-out loss's data config (None: embedded).
    """
    from mir_jax.evals import get_evaluator

    mir_eval = get_evaluator("mir", num_samples=num_samples, mode="exact", progress=progress)
    loss_eval = get_evaluator("loss", data=loss_data or "embedded", num_samples=loss_samples)
    llava, original = eval_model.model, eval_model.model.connector
    records = []
    try:
        for scale in scales:
            llava.connector = ScaledConnector(original, scale)
            result = mir_eval.run(eval_model).details["evaluation"]
            loss = loss_eval.run(eval_model).scores["loss"]
            records.append({
                "scale": float(scale), "mir": float(result.overall),
                "mir_per_layer": np.asarray(result.per_layer, np.float64).tolist(),
                "vision_norm_per_layer": np.asarray(result.vision_norm_per_layer, np.float64).tolist(),
                "text_norm_per_layer": np.asarray(result.text_norm_per_layer, np.float64).tolist(),
                "loss": float(loss)})
    finally:
        llava.connector = original
    return records


def plot(records: list[dict], path: str) -> str:
    """MIR and held-out loss against the factor; per-layer FD beside the vision/text norm ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scales = [r["scale"] for r in records]
    fig, (ax_mir, ax_layer) = plt.subplots(1, 2, figsize=(11, 4))
    ax_mir.plot(scales, [r["mir"] for r in records], "o-", label="MIR (log10 of summed FD)")
    ax_mir.set_xscale("log", base=2)
    ax_mir.set_xlabel("connector output x factor")
    ax_mir.set_ylabel("MIR")
    ax_loss = ax_mir.twinx()
    ax_loss.plot(scales, [r["loss"] for r in records], "s--", color="tab:red", label="held-out loss")
    ax_loss.set_ylabel("held-out loss", color="tab:red")
    ax_mir.legend(loc="upper left")
    for r in records:
        layers = np.arange(1, len(r["mir_per_layer"]) + 1)
        ratio = np.asarray(r["vision_norm_per_layer"]) / np.asarray(r["text_norm_per_layer"])
        line, = ax_layer.plot(layers, r["mir_per_layer"], "o-", label=f"x{r['scale']:g}: FD")
        ax_layer.plot(layers, ratio, ":", color=line.get_color(), label=f"x{r['scale']:g}: |vision|/|text|")
    ax_layer.set_yscale("log")
    ax_layer.set_xlabel("LLM layer")
    ax_layer.set_title("per-layer FD (solid) and vision/text norm ratio (dotted)")
    ax_layer.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", help="training workdir (WORKDIR or WORKDIR@STEP) or HF LLaVA directory")
    parser.add_argument("--scales", default="0.25,0.5,1,2,4", help="comma-separated positive factors")
    parser.add_argument("--num_samples", type=int, default=100, help="MIR's image/text pairs")
    parser.add_argument("--loss_samples", type=int, default=128, help="held-out records for the loss")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    try:
        scales = [float(s) for s in args.scales.split(",") if s.strip()]
    except ValueError:
        scales = []
    if not scales or min(scales) <= 0:
        parser.error(f"--scales={args.scales!r}: want comma-separated positive numbers")

    from mir_jax import provenance
    from mir_jax.evals.loading import load_model
    from mir_jax.weights import WeightsError, load_weights

    try:
        weights = load_weights(args.weights)  # it reads WORKDIR@STEP itself
    except (WeightsError, ValueError) as e:
        print(f"connector_scale: error: {e}", file=sys.stderr)
        return 2
    eval_model = load_model(args.weights, weights=weights)
    loss_data = weights.run_config.get("data") if weights.run_config is not None else None
    records = measure(eval_model, scales, num_samples=args.num_samples, loss_data=loss_data,
                      loss_samples=args.loss_samples, progress=True)
    os.makedirs(args.output_dir, exist_ok=True)
    out = {"weights": weights.source.to_json(), "versions": provenance.versions(), "num_samples": args.num_samples,
           "loss_samples": args.loss_samples, "records": records}
    with open(os.path.join(args.output_dir, RESULT_FILE), "w") as f:
        json.dump(out, f, indent=1)
    plot(records, os.path.join(args.output_dir, PLOT_FILE))
    print(f"weights: {weights.source.describe()}")
    print(f"{'scale':>6} {'MIR':>8} {'loss':>8}  |vision|/|text| at layers 1 and L")
    for r in records:
        first = r["vision_norm_per_layer"][0] / r["text_norm_per_layer"][0]
        last = r["vision_norm_per_layer"][-1] / r["text_norm_per_layer"][-1]
        print(f"{r['scale']:>6g} {r['mir']:>8.4f} {r['loss']:>8.4f}  {first:.3g} / {last:.3g}")
    print(f"wrote {os.path.join(args.output_dir, RESULT_FILE)} and {PLOT_FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
