"""scores.png shows a zero as a zero: a label "0" and pixels of the model's colour at the foot of a
zero bar (a flat bar alone draws none), while a missing score shows "n/a" and no colour."""

from __future__ import annotations

import numpy as np

from mir_jax.evals.score_plot import headline_keys, plot_scores, scores_figure

# Model "pt" right after pre-training: VQA 0; "sft" answers. pope/yes_ratio is no headline score.
SCORES = {"pt": {"vqa/accuracy": 0.0, "pope/f1": 0.62, "pope/yes_ratio": 1.0,
                 "multiple_choice/likelihood_accuracy": 0.25},
          "sft": {"vqa/accuracy": 0.5, "pope/f1": 0.8}}
KEYS = ["multiple_choice/likelihood_accuracy", "pope/f1", "vqa/accuracy"]


def _texts_at(ax):
    """{(rounded x, y): label} of the value labels."""
    return {(round(float(t.xy[0]), 3), float(t.xy[1])): t.get_text()
            for t in ax.texts if hasattr(t, "xy")}


def _colour_near(fig, ax, x, y, rgb, radius=4) -> bool:
    """Whether a pixel within `radius` of data point (x, y) has colour `rgb` (0-255)."""
    fig.canvas.draw()
    img = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(int)
    px, py = ax.transData.transform((x, y))
    row, col = int(round(img.shape[0] - py)), int(round(px))
    window = img[max(row - radius, 0): row + radius + 1, max(col - radius, 0): col + radius + 1]
    return bool((np.abs(window - np.asarray(rgb)).sum(-1) <= 6).any())


def test_headline_keys_are_the_headline_scores_of_any_model():
    assert headline_keys(SCORES) == KEYS


def test_zero_bar_has_a_zero_label_and_visible_pixels_missing_has_none():
    fig = scores_figure(SCORES)
    ax = fig.axes[0]
    width = 0.8 / 2
    labels = _texts_at(ax)
    # "pt" is the first model (offset 0); "sft" the second (offset width). Keys at x = 0, 1, 2.
    assert labels[(2.0, 0.0)] == "0"                     # pt's VQA accuracy, exactly 0
    assert labels[(1.0, 0.62)] == "0.62"
    assert labels[(0.0, 0.25)] == "0.25"
    assert labels[(round(2 + width, 3), 0.5)] == "0.5"
    assert labels[(round(0 + width, 3), 0.0)] == "n/a"   # sft has no multiple-choice score
    lo, hi = ax.get_ylim()
    assert lo <= 0 < 0.8 < hi                            # every bar and its label inside the axes

    blue, orange = (31, 119, 180), (255, 127, 14)        # matplotlib's first two colours (C0, C1)
    assert _colour_near(fig, ax, 2.0, 0.0, blue)         # the zero is drawn
    assert not _colour_near(fig, ax, width, 0.0, orange)  # the missing score is not
    assert _colour_near(fig, ax, 1.0, 0.3, blue)         # an ordinary bar, for comparison


def test_plot_scores_writes_a_png(tmp_path):
    path = plot_scores(SCORES, str(tmp_path / "scores.png"))
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
