"""A study's report beside study.json: study.md (one row per variant) and the plots
mir_vs_score.png, mir_per_layer.png and, where the runs logged norms, mir_norms.png; with
several seeds, means with standard deviations, error bars and bands (docs/studies.md, "Output")."""

from __future__ import annotations

import os
from typing import Any


def _fmt(value, digits: int = 4) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def _pm(entry: dict[str, Any], key: str, digits: int = 4) -> str:
    """"mean ± std" where the variant has a spread over seeds, else the value."""
    std = (entry.get("std") or {}).get(key)
    return _fmt(entry[key], digits) + ("" if std is None or entry[key] is None else f" ± {std:.{digits}f}")


def _interval(corr: dict[str, Any], name: str) -> str:
    ci = (corr.get("interval") or {}).get(name)
    return "—" if not ci else f"[{ci[0]:.3f}, {ci[1]:.3f}]"


def markdown(result: dict[str, Any]) -> str:
    metrics = result.get("score_metrics") or []
    n_seeds = int(result.get("n_seeds") or 1)
    head = ["variant", "MIR", "stage-1 loss", *metrics, "score"]
    lines = [f"# Study `{result['study']}`", ""]
    if result.get("description"):
        lines += [result["description"], ""]
    if n_seeds > 1:
        lines += [f"{n_seeds} seeds per variant: each value is the mean over seeds, ± the standard deviation "
                  "(ddof 1) where given.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for v in result["variants"]:
        cells = [v["name"], _pm(v, "mir"), _pm(v, "stage1_loss")]
        for m in metrics:
            evaluator, _, metric = m.rpartition("/")
            cells.append(_fmt(v["scores"].get(evaluator, {}).get(metric)))
        cells.append(_pm(v, "score"))
        lines.append("| " + " | ".join(cells) + " |")
    corr = result["correlation"]
    lines += ["", "Rank correlation with the score (over the variants that have both; lower MIR or loss "
              "should mean a better model, so a good predictor is near -1):", ""]
    rows = [("MIR", corr["mir"]), ("stage-1 loss", corr["loss"])]
    if any((c.get("interval") or {}).get(n) for _, c in rows for n in ("spearman", "kendall")):
        c0 = corr["mir"]
        lines += [f"(on the variants' means; intervals: {100 * c0.get('confidence', 0.95):g} % percentile bootstrap "
                  f"over seeds, {c0.get('n_bootstrap')} resamples, seeds resampled within each variant)", "",
                  "| predictor | Spearman | interval | Kendall | interval |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {_fmt(c['spearman'], 3)} | {_interval(c, 'spearman')} | {_fmt(c['kendall'], 3)} | "
                  f"{_interval(c, 'kendall')} |" for name, c in rows]
    else:
        lines += ["| predictor | Spearman | Kendall |", "|---|---|---|"]
        lines += [f"| {name} | {_fmt(c['spearman'], 3)} | {_fmt(c['kendall'], 3)} |" for name, c in rows]
    lines.append("")
    return "\n".join(lines)


def plot_scatter(result: dict[str, Any], path: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("mir", "stage-1 MIR"), ("stage1_loss", "stage-1 held-out loss")]
    points = {k: [v for v in result["variants"] if v[k] is not None and v["score"] is not None] for k, _ in panels}
    if not any(points.values()):
        return None
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (key, label) in zip(axes, panels):
        corr = result["correlation"]["mir" if key == "mir" else "loss"]
        for v in points[key]:
            x, y, std = v[key], v["score"], v.get("std") or {}
            if std.get(key) is not None or std.get("score") is not None:  # one std over seeds
                ax.errorbar(x, y, xerr=std.get(key), yerr=std.get("score"), color="tab:blue", fmt="o",
                            ecolor="tab:blue", elinewidth=1, capsize=3, alpha=0.8)
            else:
                ax.scatter(x, y, color="tab:blue")
            ax.annotate(v["name"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        title = [f"Spearman {_fmt(corr['spearman'], 2)}", f"Kendall {_fmt(corr['kendall'], 2)}"]
        for i, name in enumerate(("spearman", "kendall")):
            ci = (corr.get("interval") or {}).get(name)
            if ci:
                title[i] += f" [{ci[0]:.2f}, {ci[1]:.2f}]"
        ax.set_xlabel(label)
        ax.set_ylabel("score (" + ", ".join(result.get("score_metrics") or []) + ")", fontsize=7)
        ax.set_title(", ".join(title), fontsize=9)
        ax.grid(alpha=0.3)
    seeds, level = int(result.get("n_seeds") or 1), 100 * result["correlation"]["mir"].get("confidence", 0.95)
    fig.suptitle(f"{result['study']}: does the predictor rank the variants by their score?"
                 + (f"\n(means over {seeds} seeds, bars 1 std; [{level:g} % bootstrap interval])" if seeds > 1 else ""),
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _seed_curves(v: dict[str, Any], key: str) -> list[list[float]]:
    """The variant's seeds' curves of `key` that have its mean's length (for a band)."""
    n = len(v[key] or [])
    return [s[key] for s in v.get("seeds") or [] if s.get(key) and len(s[key]) == n]


def _curves(ax, result: dict[str, Any], key: str) -> bool:
    """One line per variant (its mean over seeds), a band spanning its seeds' curves; False if
    no variant has the curve."""
    from matplotlib.ticker import MaxNLocator

    drawn = False
    for i, v in enumerate(result["variants"]):
        values = v.get(key)
        if not values:
            continue
        layers = range(1, len(values) + 1)
        line, = ax.plot(layers, values, marker="o", label=v["name"], color=f"C{i % 10}")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        seeds = _seed_curves(v, key)
        if len(seeds) > 1:
            ax.fill_between(layers, [min(c) for c in zip(*seeds)], [max(c) for c in zip(*seeds)],
                            color=line.get_color(), alpha=0.2, linewidth=0)
        drawn = True
    return drawn


def plot_per_layer(result: dict[str, Any], path: str) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not any(v.get("mir_per_layer") for v in result["variants"]):
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    _curves(ax, result, "mir_per_layer")
    ax.set_yscale("log")
    ax.set_xlabel("LLM layer")
    ax.set_ylabel("MIR (Fréchet distance, log scale)")
    seeds = int(result.get("n_seeds") or 1)
    ax.set_title(f"{result['study']}: per-layer MIR"
                 + (f" (mean of {seeds} seeds; bands: their range)" if seeds > 1 else ""), fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_norms(result: dict[str, Any], path: str) -> str | None:
    """mir_norms.png: per layer, MIR and the vision and text hidden states' mean L2 norms (one
    panel each, log y), one line per variant; None if no run logged the norms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = ("vision_norm_per_layer", "text_norm_per_layer")
    if not any(v.get(k) for v in result["variants"] for k in keys):
        return None
    panels = [("mir_per_layer", "MIR (Fréchet distance)"), ("vision_norm_per_layer", "vision hidden-state norm"),
              ("text_norm_per_layer", "text hidden-state norm")]
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    for ax, (key, label) in zip(axes, panels):
        if _curves(ax, result, key):
            ax.set_yscale("log")
            ax.legend(fontsize=7)
        ax.set_xlabel("LLM layer")
        ax.set_ylabel(label + " (log scale)")
        ax.grid(alpha=0.3)
    seeds = int(result.get("n_seeds") or 1)
    fig.suptitle(f"{result['study']}: per-layer MIR and the mean L2 norms of the hidden states it compares"
                 + (f" (means of {seeds} seeds; bands: their range)" if seeds > 1 else ""), fontsize=10)
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
    for fn, name in ((plot_scatter, "mir_vs_score.png"), (plot_per_layer, "mir_per_layer.png"),
                     (plot_norms, "mir_norms.png")):
        written = fn(result, os.path.join(directory, name))
        if written:
            out.append(written)
    return out
