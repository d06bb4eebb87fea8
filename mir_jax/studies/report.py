"""A study's report beside study.json: study.md (one row per variant) and the plots:
mir_vs_score.png (stage-1 MIR and, beside it, stage-1 loss against the score, with Spearman
and Kendall in the titles) and mir_per_layer.png (each variant's MIR curve over layers)."""

from __future__ import annotations

import os
from typing import Any


def _fmt(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def markdown(result: dict[str, Any]) -> str:
    metrics = result.get("score_metrics") or []
    head = ["variant", "MIR", "stage-1 loss", *metrics, "score"]
    lines = [f"# Study `{result['study']}`", ""]
    if result.get("description"):
        lines += [result["description"], ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in result["variants"]:
        cells = [v["name"], _fmt(v["mir"]), _fmt(v["stage1_loss"])]
        for m in metrics:
            evaluator, _, metric = m.rpartition("/")
            cells.append(_fmt(v["scores"].get(evaluator, {}).get(metric)))
        cells.append(_fmt(v["score"]))
        lines.append("| " + " | ".join(cells) + " |")
    corr = result["correlation"]
    lines += ["", "Rank correlation with the score (over the variants that have both; lower MIR or loss "
              "should mean a better model, so a good predictor is near -1):", "",
              "| predictor | Spearman | Kendall |", "|---|---|---|",
              f"| MIR | {_fmt(corr['mir']['spearman'], 3)} | {_fmt(corr['mir']['kendall'], 3)} |",
              f"| stage-1 loss | {_fmt(corr['loss']['spearman'], 3)} | {_fmt(corr['loss']['kendall'], 3)} |", ""]
    return "\n".join(lines)


def plot_scatter(result: dict[str, Any], path: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("mir", "stage-1 MIR"), ("stage1_loss", "stage-1 held-out loss")]
    points = {k: [(v[k], v["score"], v["name"]) for v in result["variants"]
                  if v[k] is not None and v["score"] is not None] for k, _ in panels}
    if not any(points.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, label) in zip(axes, panels):
        corr = result["correlation"]["mir" if key == "mir" else "loss"]
        for x, y, name in points[key]:
            ax.scatter(x, y, color="tab:blue")
            ax.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xlabel(label)
        ax.set_ylabel("score (" + ", ".join(result.get("score_metrics") or []) + ")", fontsize=7)
        ax.set_title(f"Spearman {_fmt(corr['spearman'], 2)}, Kendall {_fmt(corr['kendall'], 2)}")
        ax.grid(alpha=0.3)
    fig.suptitle(f"{result['study']}: does the predictor rank the variants by their score?")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_per_layer(result: dict[str, Any], path: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves = [(v["name"], v["mir_per_layer"]) for v in result["variants"] if v.get("mir_per_layer")]
    if not curves:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for name, values in curves:
        ax.plot(range(1, len(values) + 1), values, marker="o", label=name)
    ax.set_yscale("log")
    ax.set_xlabel("LLM layer")
    ax.set_ylabel("MIR (Fréchet distance, log scale)")
    ax.set_title(f"{result['study']}: per-layer MIR")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write(result: dict[str, Any], directory: str) -> list[str]:
    """study.md and the plots in `directory`; returns the paths written."""
    out = []
    md = os.path.join(directory, "study.md")
    with open(md, "w") as f:
        f.write(markdown(result))
    out.append(md)
    for fn, name in ((plot_scatter, "mir_vs_score.png"), (plot_per_layer, "mir_per_layer.png")):
        written = fn(result, os.path.join(directory, name))
        if written:
            out.append(written)
    return out
