"""scores.png: the headline downstream score of every evaluator, one bar group per score, one bar
per model, each labelled with its value; a zero gets a marker and the label "0" so it reads as
a zero, not as nothing.
"""

from __future__ import annotations

import math

# The one score per downstream evaluator that scores.png and the training plot draw.
HEADLINE_SCORES = ("cider", "accuracy", "f1", "likelihood_accuracy")


def headline_keys(scores: dict[str, dict[str, float]]) -> list[str]:
    """The sorted "EVALUATOR/score" keys of any model whose score is a headline one."""
    return sorted({k for s in scores.values() for k in s if k.split("/")[-1] in HEADLINE_SCORES})


def _label(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return "0" if value == 0 else f"{value:.3g}"


def scores_figure(scores: dict[str, dict[str, float]]):
    """The matplotlib Figure of `scores` ({model: {"EVALUATOR/score": value}}): grouped bars,
    a value label over every bar ("0" for a zero, "n/a" where a model lacks the score) and a
    marker at height 0 for every zero bar."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    keys = headline_keys(scores)
    models = list(scores)
    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(keys) * max(1, len(models)) / 2 + 2), 4))
    width = 0.8 / max(len(models), 1)
    x = np.arange(len(keys))
    top = max([abs(v) for s in scores.values() for k, v in s.items() if k in keys
               and v is not None and not math.isnan(v)] + [1e-9])
    for i, m in enumerate(models):
        values = [scores[m].get(k, math.nan) for k in keys]
        bars = ax.bar(x + i * width, values, width, label=m)
        zero = [j for j, v in enumerate(values) if v == 0]
        if zero:
            # A flat bar draws nothing: a thick tick in the bar's own colour marks it.
            ax.plot(x[zero] + i * width, np.zeros(len(zero)), linestyle="none", marker="_",
                    markersize=max(6.0, 40 * width), markeredgewidth=3,
                    color=bars.patches[0].get_facecolor(), gid="zero_score")
        for j, v in enumerate(values):
            height = 0.0 if math.isnan(v) else v
            ax.annotate(_label(v), (x[j] + i * width, height), xytext=(0, 3),
                        textcoords="offset points", ha="center", va="bottom", fontsize=7)
    # Room above the tallest bar for its label; a zero-only plot still shows the axis from 0.
    ax.set_ylim(min(0.0, ax.get_ylim()[0]), top * 1.15 if top > 1e-9 else 1.0)
    ax.set_xticks(x + width * (len(models) - 1) / 2, keys, rotation=30, ha="right", fontsize=8)
    ax.set_ylabel("score")
    ax.set_title("Downstream scores")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_scores(scores: dict[str, dict[str, float]], path: str) -> str:
    """Writes `scores_figure(scores)` to the PNG `path`; returns `path`."""
    import matplotlib.pyplot as plt

    fig = scores_figure(scores)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
