"""MIR's jackknife intervals over samples (docs/mir.md, section 9) against an independent float64
transcription of the same estimator written here from the definition (tests/reference_mir.py's
float64 MIR steps as the plain computation), and their coverage of a closed-form population
Fréchet distance on synthetic Gaussian samples.
"""

import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import scipy.linalg
import scipy.stats

from mir_jax import mir
from mir_jax.mir import uncertainty
from tests import reference_mir as ref

# ----------------------------------------------------------------------------- the reference


def _jackknife(estimate, replicates, quantile):
    """se and the interval around G·θ − (G−1)·mean(θ_g), from the jackknife's textbook formulas."""
    g = replicates.shape[0]
    mean = replicates.mean(0)
    se = np.sqrt((g - 1) / g * ((replicates - mean) ** 2).sum(0))
    centre = g * estimate - (g - 1) * mean
    return se, np.stack([centre - quantile * se, centre + quantile * se], -1)


def reference_jackknife(vision, text, groups_v, groups_t, normalize=True, outliers=True,
                        route="auto", level=0.95):
    """The estimator in float64, from the definition.

    vision, text: lists over layers of the valid rows [n, D]; groups_v [n], groups_t [m].
    Per layer: the 3-sigma rule is taken once on all samples (on the raw rows: it is
    scale-invariant); replicate g drops group g's rows and is normalized by the mean norm of
    its own text rows before the rule, as the plain computation normalizes before it.
    """
    num_groups = int(max(groups_v.max(), groups_t.max())) + 1
    quantile = scipy.stats.t.ppf(0.5 + level / 2, num_groups - 1)
    per_layer, replicates = [], []
    for v, t in zip(vision, text):
        v, t = np.asarray(v, np.float64), np.asarray(t, np.float64)
        per_layer.append(ref.mir([v], [t], normalize, outliers, route)[0][0])
        norms = np.linalg.norm(t, axis=1)
        if outliers:
            v, t = ref.replace_outliers(v), ref.replace_outliers(t)
        row = []
        for g in range(num_groups):
            keep_v, keep_t = groups_v != g, groups_t != g
            scale = 1.0 / np.mean(norms[keep_t]) if normalize else 1.0
            row.append(ref.frechet(v[keep_v] * scale, t[keep_t] * scale, route))
        replicates.append(row)
    per_layer, replicates = np.array(per_layer), np.array(replicates).T  # [L], [G, L]
    overall, overall_reps = np.log10(per_layer.sum()), np.log10(replicates.sum(1))
    se, interval = _jackknife(per_layer, replicates, quantile)
    overall_se, overall_interval = _jackknife(overall, overall_reps, quantile)
    return dict(per_layer=per_layer, replicates=replicates, se=se, interval=interval,
                overall=overall, overall_replicates=overall_reps, overall_se=overall_se,
                overall_interval=overall_interval)


# ----------------------------------------------------------------------------- data


def sample_layers(rng, layers, samples, d, vision_tokens=(3, 7), text_tokens=(2, 9), pad=5):
    """Rows of `samples` samples: a per-sample offset shared by its tokens (tokens of one sample
    are correlated), a few massive-activation rows so the 3-sigma rule fires, and `pad` padding
    rows of garbage. Returns vision [L, N, D], text [L, M, D], masks, per-row sample ids."""
    def modality(shift, tokens):
        counts = rng.integers(*tokens, size=samples)
        ids = np.concatenate([np.repeat(np.arange(samples), counts), np.full(pad, -1)])
        rows = []
        for _ in range(layers):
            mixing = rng.standard_normal((d, d)) * 0.3 + np.eye(d)
            offsets = rng.standard_normal((samples, d)) * 0.7
            x = rng.standard_normal((len(ids), d)) @ mixing + offsets[ids] + shift
            x[rng.choice(counts.sum(), 3, replace=False), :2] += 40.0
            x[ids < 0] = 1e3
            rows.append(x)
        return np.stack(rows).astype(np.float32), ids >= 0, ids

    vision, vision_mask, vision_ids = modality(0.4, vision_tokens)
    text, text_mask, text_ids = modality(0.0, text_tokens)
    return vision, text, vision_mask, text_mask, vision_ids, text_ids


def run_both(vision, text, vision_mask, text_mask, vision_ids, text_ids, num_groups, **kw):
    groups_v, groups_t = uncertainty.jackknife_groups(vision_ids, text_ids, num_groups)
    ours = mir.compute_mir(vision, text, vision_mask=vision_mask, text_mask=text_mask,
                           uncertainty="jackknife", vision_groups=groups_v, text_groups=groups_t, **kw)
    expected = reference_jackknife([x[vision_mask] for x in vision], [x[text_mask] for x in text],
                                   groups_v[vision_mask], groups_t[text_mask],
                                   kw.get("normalize", True), kw.get("remove_outliers", True),
                                   "nuclear" if kw.get("method") == "gram" else "auto")
    return ours, expected


def rel(a, b):
    return np.max(np.abs(np.asarray(a, np.float64) / np.asarray(b, np.float64) - 1))


# ----------------------------------------------------------------------------- against the reference


@pytest.mark.parametrize("method, d, samples, num_groups, tol", [
    ("eigh", 10, 40, 8, 1e-4),  # N > D: per-group moments route
    ("gram", 48, 12, 4, 1e-3),  # N < D: the rows route (masked), as compute_mir's gram
])
def test_interval_matches_float64_reference(method, d, samples, num_groups, tol):
    rng = np.random.default_rng(0)
    data = sample_layers(rng, 2, samples, d)
    vision, _, vision_mask = data[0], data[1], data[2]
    replaced = np.abs(np.linalg.norm(vision[0][vision_mask], axis=1)
                      - ref.torch_lower_median(np.linalg.norm(vision[0][vision_mask], axis=1)))
    assert (replaced > 3 * np.std(np.linalg.norm(vision[0][vision_mask], axis=1), ddof=1)).any()
    ours, expected = run_both(*data, num_groups, method=method)
    assert rel(ours.per_layer_replicates, expected["replicates"]) < tol
    assert rel(ours.overall_replicates, expected["overall_replicates"]) < tol
    # The se is a spread of replicates a few % apart: their float32 error, relative to the
    # values, is what the se and interval can be held to.
    scale = expected["per_layer"]
    # (The bias-corrected centre G·θ − (G−1)·mean θ_g carries up to 2G times a replicate's error.)
    assert np.max(np.abs(np.asarray(ours.per_layer_se) - expected["se"]) / scale) < tol
    assert np.max(np.abs(np.asarray(ours.per_layer_interval) - expected["interval"]) / scale[:, None]) < 10 * tol
    assert abs(float(ours.overall_se) - expected["overall_se"]) < tol
    assert np.max(np.abs(np.asarray(ours.overall_interval) - expected["overall_interval"])) < 10 * tol
    assert rel(ours.per_layer, expected["per_layer"]) < tol


def test_intervals_leave_the_plain_values_unchanged():
    rng = np.random.default_rng(1)
    vision, text, vision_mask, text_mask, vision_ids, text_ids = sample_layers(rng, 3, 30, 8)
    groups_v, groups_t = uncertainty.jackknife_groups(vision_ids, text_ids, 6)
    plain = mir.compute_mir(vision, text, vision_mask=vision_mask, text_mask=text_mask)
    with_interval = mir.compute_mir(vision, text, vision_mask=vision_mask, text_mask=text_mask,
                                    uncertainty="jackknife", vision_groups=groups_v, text_groups=groups_t)
    np.testing.assert_array_equal(with_interval.per_layer, plain.per_layer)
    assert float(with_interval.overall) == float(plain.overall)
    assert plain.per_layer_se is None and plain.overall_interval is None
    assert np.shape(with_interval.per_layer_replicates) == (6, 3)
    assert np.shape(with_interval.per_layer_interval) == (3, 2)


def test_without_normalization_or_outlier_rule_matches_reference():
    rng = np.random.default_rng(2)
    data = sample_layers(rng, 1, 30, 6)
    ours, expected = run_both(*data, 5, normalize=False, remove_outliers=False, method="eigh")
    assert rel(ours.per_layer_replicates, expected["replicates"]) < 1e-4


def test_jackknife_groups_deal_samples_round_robin():
    vision_groups, text_groups = uncertainty.jackknife_groups([7, 7, 3, 9, -1], [3, 9, 9, 12], 2)
    # Sorted distinct ids 3, 7, 9, 12 -> groups 0, 1, 0, 1; padding -1 stays -1.
    np.testing.assert_array_equal(vision_groups, [1, 1, 0, 0, -1])
    np.testing.assert_array_equal(text_groups, [0, 0, 0, 1])


def test_paired_difference_matches_reference():
    rng = np.random.default_rng(3)
    vision, text, vision_mask, text_mask, vision_ids, text_ids = sample_layers(rng, 2, 40, 8)
    # Model b: the same samples seen slightly differently (shared sample noise between a and b).
    vision_b = (vision * 1.1 + rng.standard_normal(vision.shape) * 0.2).astype(np.float32)
    groups_v, groups_t = uncertainty.jackknife_groups(vision_ids, text_ids, 8)
    kw = dict(vision_mask=vision_mask, text_mask=text_mask, uncertainty="jackknife",
              vision_groups=groups_v, text_groups=groups_t, method="eigh")
    a, b = mir.compute_mir(vision, text, **kw), mir.compute_mir(vision_b, text, **kw)
    diff = uncertainty.paired_difference(a, b)
    args = ([x[text_mask] for x in text], groups_v[vision_mask], groups_t[text_mask])
    ref_a = reference_jackknife([x[vision_mask] for x in vision], *args)
    ref_b = reference_jackknife([x[vision_mask] for x in vision_b], *args)
    quantile = scipy.stats.t.ppf(0.975, 7)
    se, interval = _jackknife(ref_a["overall"] - ref_b["overall"],
                              ref_a["overall_replicates"] - ref_b["overall_replicates"], quantile)
    assert abs(diff.overall - (ref_a["overall"] - ref_b["overall"])) < 1e-4
    assert abs(diff.overall_se - se) < 3e-4
    np.testing.assert_allclose(diff.overall_interval, interval, atol=3e-3)
    assert diff.excludes_zero == bool(interval[0] > 0 or interval[1] < 0)
    layer_se, _ = _jackknife(ref_a["per_layer"] - ref_b["per_layer"],
                             ref_a["replicates"] - ref_b["replicates"], quantile)
    np.testing.assert_allclose(diff.per_layer_se, layer_se, rtol=1e-2)


# ----------------------------------------------------------------------------- coverage


def population_fd(mu_a, cov_a, mu_b, cov_b):
    root = scipy.linalg.sqrtm(cov_a @ cov_b)
    return float((mu_a - mu_b) @ (mu_a - mu_b) + np.trace(cov_a + cov_b - 2 * np.real(root)))


def test_interval_covers_the_population_fd():
    """Tokens = mean + a per-sample offset N(0, A) + token noise N(0, B): Gaussian rows with
    covariance A + B, correlated within a sample. The population FD of the two modalities is then
    the closed form. Normalization and the outlier rule are off: the first divides by a mean norm
    and the second cuts the Gaussian's tails, and neither population value has a closed form.
    200 repetitions of 100 samples (6 tokens of each modality), G = 10, 95 % intervals."""
    start = time.perf_counter()
    rng = np.random.default_rng(4)
    d, samples, tokens, num_groups, reps = 16, 100, 6, 10, 200

    def random_cov(scale):
        m = rng.standard_normal((d, d)) * 0.3 + np.eye(d)
        return m @ m.T * scale

    offset_v, noise_v, offset_t, noise_t = random_cov(0.5), random_cov(0.5), random_cov(0.3), random_cov(0.7)
    mean_v, mean_t = rng.standard_normal(d) * 0.5, np.zeros(d)
    truth = population_fd(mean_v, offset_v + noise_v, mean_t, offset_t + noise_t)
    factors = [np.linalg.cholesky(c) for c in (offset_v, noise_v, offset_t, noise_t)]
    ids = np.repeat(np.arange(samples), tokens)
    groups_v, groups_t = uncertainty.jackknife_groups(ids, ids, num_groups)

    def rows(mean, offset, noise):
        per_sample = rng.standard_normal((samples, d)) @ offset.T
        return (mean + per_sample[ids] + rng.standard_normal((len(ids), d)) @ noise.T).astype(np.float32)

    covered = 0
    for _ in range(reps):
        vision = rows(mean_v, *factors[:2])[None]
        text = rows(mean_t, *factors[2:])[None]
        result = mir.compute_mir(vision, text, normalize=False, remove_outliers=False,
                                 uncertainty="jackknife", vision_groups=groups_v, text_groups=groups_t)
        lo, hi = np.asarray(result.per_layer_interval)[0]
        covered += lo <= truth <= hi
    print(f"coverage {covered}/{reps}, population FD {truth:.4f}")
    assert 0.88 * reps <= covered <= 0.99 * reps, (covered, truth)
    assert time.perf_counter() - start < 60


# ----------------------------------------------------------------------------- errors


def _small():
    rng = np.random.default_rng(5)
    vision, text, vision_mask, text_mask, vision_ids, text_ids = sample_layers(rng, 1, 12, 4, pad=0)
    return vision, text, *uncertainty.jackknife_groups(vision_ids, text_ids, 4)


def test_errors_are_one_line():
    vision, text, groups_v, groups_t = _small()
    cases = [
        (dict(uncertainty="jackknife", text_groups=groups_t), "needs vision_groups"),
        (dict(uncertainty="jackknife", vision_groups=groups_v[:-1], text_groups=groups_t), "shape"),
        (dict(uncertainty="jackknife", vision_groups=np.where(groups_v == 2, 0, groups_v),
              text_groups=groups_t), "sample group 2 has no valid vision row"),
        (dict(uncertainty="jackknife", vision_groups=np.zeros_like(groups_v),
              text_groups=np.zeros_like(groups_t)), "at least 2 sample groups"),
        (dict(uncertainty="jackknife", vision_groups=np.where(groups_v == 0, -1, groups_v),
              text_groups=groups_t), "negative group"),
        (dict(uncertainty="bootstrap", vision_groups=groups_v, text_groups=groups_t), "unknown uncertainty"),
        (dict(vision_groups=groups_v, text_groups=groups_t), "only used with uncertainty"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message) as info:
            mir.compute_mir(vision, text, **kwargs)
        assert "\n" not in str(info.value)
    with pytest.raises(ValueError, match="num_groups=20"):
        uncertainty.jackknife_groups(np.arange(12), np.arange(12), 20)
    plain = mir.compute_mir(vision, text)
    with pytest.raises(ValueError, match="needs results of compute_mir"):
        uncertainty.paired_difference(plain, plain)


def test_streaming_refuses_uncertainty_in_one_line():
    with pytest.raises(ValueError, match="compute_mir") as info:
        mir.MIRAccumulator(uncertainty="jackknife")
    assert "\n" not in str(info.value)


def test_format_mir_prints_the_intervals():
    vision, text, groups_v, groups_t = _small()
    result = mir.compute_mir(vision, text, uncertainty="jackknife", vision_groups=groups_v,
                             text_groups=groups_t)
    table = mir.format_mir(result)
    lo, hi = np.asarray(result.overall_interval)
    assert "jackknife over 4 sample groups" in table
    assert f"[{lo:.6f}, {hi:.6f}]" in table


@pytest.mark.slow  # runs the benchmark script in a fresh process, as BENCHMARKS.md shows it
def test_benchmark_runs_and_its_interval_keeps_the_plain_values():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out = subprocess.run([sys.executable, os.path.join(root, "benchmarks", "mir_uncertainty.py"), "--quick",
                          "--repeats", "1"], cwd=root, env={**os.environ, "XLA_FLAGS": ""},
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-4000:]
    assert re.search(r"interval / plain: +[\d.]+x", out.stdout), out.stdout
    assert "per_layer identical to plain: True" in out.stdout, out.stdout
