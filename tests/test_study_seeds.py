"""Studies with seeds: every variant's non-shared stages run N times (`seeds`, `study.py
--seeds`), study.json keeps each seed's values, their means and standard deviations, and a
percentile bootstrap interval (seeds resampled within each variant) beside each correlation.

References: the batched rank correlations against scipy.stats row by row; the bootstrap
against hand-enumerated resampling distributions and against scipy.stats.bootstrap
(method="percentile", one sample per variant) drawing the same resamples; the means and
standard deviations of collect() against Python's `statistics`; a 2-variant, 2-seed study
through study.py (grown from the same study with one seed) against its runs' own metrics rows."""

from __future__ import annotations

import json
import os
import statistics
import textwrap
import types

import numpy as np
import pytest
import scipy.stats

from mir_jax import studies
from mir_jax.studies import bootstrap
from tests.test_study import _SMALL, STUDY_FILE, _study, _study_py

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----- the batched correlations ------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
@pytest.mark.parametrize("ties", [False, True])
def test_batched_correlations_equal_scipy_row_by_row(ties):
    rng = np.random.default_rng(7 + ties)
    x = rng.integers(0, 3, (60, 5)).astype(float) if ties else rng.normal(size=(60, 5))
    y = rng.integers(0, 3, (60, 5)).astype(float) if ties else x * 0.5 + rng.normal(size=(60, 5))
    rho, tau = bootstrap.spearman_rows(x, y), bootstrap.kendall_rows(x, y)
    for b in range(x.shape[0]):
        want_rho, want_tau = scipy.stats.spearmanr(x[b], y[b]).statistic, scipy.stats.kendalltau(x[b], y[b]).statistic
        np.testing.assert_allclose(rho[b], want_rho, rtol=1e-12, atol=1e-12, equal_nan=True)
        np.testing.assert_allclose(tau[b], want_tau, rtol=1e-12, atol=1e-12, equal_nan=True)
    if ties:  # some rows are constant in a variable: undefined, as in scipy
        assert np.isnan(rho).any() and np.isnan(tau).any()


# ----- the bootstrap: hand-enumerated cases --------------------------------------------------------

# Variant A has two seeds, (MIR, score) = (1, 0.4) and (5, 0.0); B and C one each. Resampling
# A's seeds (paired) gives A's means (1, .4), (3, .2), (5, 0) with probabilities 1/4, 1/2, 1/4;
# against B (3, .2) and C (10, .3) the coefficients are, by hand:
#   A = (1, .4): MIR ranks (1, 2, 3), score ranks (3, 1, 2): rho = -1/2, tau = (-1 - 1 + 1)/3 = -1/3
#   A = (3, .2): A ties B in both:                          rho = 1,    tau = 2 / sqrt(2 * 2) = 1
#   A = (5, 0):  MIR ranks (2, 1, 3), score ranks (1, 2, 3): rho = 1/2,  tau = (-1 + 1 + 1)/3 = 1/3
# Each value has probability >= 1/4, far above 2.5 %: the 95 % interval runs from the smallest
# to the largest.
HAND = [[(1.0, 0.4), (5.0, 0.0)], [(3.0, 0.2)], [(10.0, 0.3)]]


def test_bootstrap_hand_enumerated_case():
    got = bootstrap.correlation_intervals(HAND)
    assert got["spearman"] == pytest.approx([-0.5, 1.0], abs=1e-12)
    assert got["kendall"] == pytest.approx([-1 / 3, 1.0], abs=1e-12)
    # The draws pair a seed's MIR with its own score, and A's three means come 1/4, 1/2, 1/4.
    means = bootstrap.resampled_means([np.array(g) for g in HAND], 4000, np.random.default_rng(1))
    a = {tuple(np.round(m, 12)) for m in means[:, 0]}
    assert a == {(1.0, 0.4), (3.0, 0.2), (5.0, 0.0)}
    share = np.mean(means[:, 0, 0] == 3.0)
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / 4000)
    assert (means[:, 1] == (3.0, 0.2)).all() and (means[:, 2] == (10.0, 0.3)).all()  # one seed: fixed


def test_bootstrap_collapses_where_the_seeds_agree():
    # Every variant's seeds agree: each resample reproduces the means, so the interval is the point.
    groups = [[(x, s)] * 3 for x, s in ((2.0, 0.1), (1.0, 0.5), (4.0, 0.2), (3.0, 0.4))]
    rho = scipy.stats.spearmanr([2, 1, 4, 3], [0.1, 0.5, 0.2, 0.4]).statistic  # -0.8
    tau = scipy.stats.kendalltau([2, 1, 4, 3], [0.1, 0.5, 0.2, 0.4]).statistic  # -2/3
    got = bootstrap.correlation_intervals(groups)
    assert got["spearman"] == pytest.approx([rho, rho]) and got["kendall"] == pytest.approx([tau, tau])


def test_bootstrap_undefined_where_nothing_to_resample():
    none = {"spearman": None, "kendall": None}
    assert bootstrap.correlation_intervals([[(1, 2)], [(2, 3)], [(3, 1)]]) == none  # one seed each
    assert bootstrap.correlation_intervals([[(1, 2), (2, 2)]]) == none  # one variant


def test_bootstrap_is_reproducible():
    groups = [np.random.default_rng(i).normal(size=(3, 2)) for i in range(4)]
    assert bootstrap.correlation_intervals(groups) == bootstrap.correlation_intervals(groups)


# ----- the bootstrap against scipy.stats.bootstrap -------------------------------------------------

@pytest.mark.parametrize("seed", [0, 3])
def test_bootstrap_equals_scipy_percentile_bootstrap(seed):
    """scipy.stats.bootstrap(paired=False, method="percentile") with one sample per variant, each
    of shape (2, n_v) (a seed's predictor and score resampled together along the last axis),
    and a statistic that averages each resampled variant and takes scipy's spearmanr /
    kendalltau over the variants. Given the same numpy Generator seed, scipy draws the same
    resamples (one rng.integers(0, n_v, (B, n_v)) per sample, in order), so the two percentile
    intervals agree to rounding: the resampling scheme and the statistic match (the quantile rule
    too, though these discrete coefficients hardly test it: the next test does)."""
    rng = np.random.default_rng(100 + seed)
    sizes = (2, 3, 4, 3, 2)
    groups = [np.column_stack([rng.normal(i * 0.3, 1.0, n), rng.normal(-i * 0.2, 1.0, n)])
              for i, n in enumerate(sizes)]
    B = 600

    def statistic_of(corr):
        def statistic(*samples, axis=-1):
            means = np.stack([s.mean(axis=axis) for s in samples], axis=-1)  # (2, ..., V)
            x, y = means[0].reshape(-1, len(samples)), means[1].reshape(-1, len(samples))
            return np.array([corr(a, b).statistic for a, b in zip(x, y)]).reshape(means.shape[1:-1])
        return statistic

    ours = bootstrap.correlation_intervals(groups, n_bootstrap=B, seed=seed)
    data = tuple(g.T for g in groups)
    for name, corr in (("spearman", scipy.stats.spearmanr), ("kendall", scipy.stats.kendalltau)):
        res = scipy.stats.bootstrap(data, statistic_of(corr), n_resamples=B, paired=False, vectorized=True, axis=-1,
                                    method="percentile", confidence_level=0.95, rng=np.random.default_rng(seed))
        want = [res.confidence_interval.low, res.confidence_interval.high]
        np.testing.assert_allclose(ours[name], want, rtol=1e-12, atol=1e-12)
        assert want[0] < want[1]  # not a degenerate case that any rule would meet


def test_percentile_rule_equals_scipy_on_a_continuous_statistic():
    """The rank correlations take few values, so the test above hardly sees the quantile rule;
    here the statistic is one variant's mean over its seeds (continuous): the same draws as
    scipy.stats.bootstrap(method="percentile"), and the same interval at two levels."""
    x = np.random.default_rng(5).normal(size=7)
    for confidence in (0.95, 0.8):
        means = bootstrap.resampled_means([x[:, None]], 999, np.random.default_rng(11))[:, 0, 0]
        res = scipy.stats.bootstrap((x,), np.mean, n_resamples=999, method="percentile",
                                    confidence_level=confidence, rng=np.random.default_rng(11))
        np.testing.assert_allclose(bootstrap.percentile_interval(means, confidence),
                                   [res.confidence_interval.low, res.confidence_interval.high], rtol=1e-12)


# ----- plan and spec with seeds ------------------------------------------------------------------

def test_plan_with_seeds_layout_seed_overrides_and_chains(tmp_path):
    stages = [{"name": "s0", "config": "configs/llava15_pretrain.py:runlocal", "shared": True},
              {"name": "s1", "config": "configs/llava15_pretrain.py:runlocal", "init_from": "s0"},
              {"name": "s2", "config": "configs/llava15_sft.py:runlocal", "init_from": "s1"}]
    one = studies.from_dict(_study(stages=stages))
    three = studies.from_dict(_study(stages=stages, seeds=3))
    assert one.seeds == 1 and three.seeds == 3 and studies.with_seeds(one, 3) == three
    runs1, runs3 = studies.plan(one, str(tmp_path)), studies.plan(three, str(tmp_path))
    # Seed 0 is the one-seed study, command for command; the shared stage runs once.
    assert [studies.command(r, REPO) for r in runs3[:len(runs1)]] == [studies.command(r, REPO) for r in runs1]
    assert len(runs3) == 1 + 2 * 2 * 3
    by = {r.label: r for r in runs3}
    assert list(by)[:5] == ["shared/s0", "a/s1", "a/s2", "b/s1", "b/s2"]
    a1, a2 = by["a/seed_2/s1"], by["a/seed_2/s2"]
    assert a1.workdir == str(tmp_path / "a" / "seed_2" / "s1") and a1.seed == 2
    assert a1.overrides["init_from"] == str(tmp_path / "shared" / "s0")   # the shared stage, once
    assert a2.overrides["init_from"] == a1.workdir and a2.after == (a1.workdir,)  # the same seed's run
    # config seed = the run's own seed (0 here; 3 where variant b sets it) + k
    assert a1.overrides["seed"] == 2 and by["a/seed_1/s2"].overrides["seed"] == 1
    assert by["b/s1"].overrides["seed"] == 3 and by["b/seed_2/s1"].overrides["seed"] == 5
    assert "seed" not in by["a/s1"].overrides
    assert "--config.seed=2" in studies.command(a1, REPO)


@pytest.mark.parametrize("changes, message", [
    ({"seeds": 0}, "seeds=0 must be an integer >= 1"),
    ({"seeds": 2.0}, "seeds=2.0 must be an integer"),
    ({"seeds": True}, "seeds=True must be an integer"),
    ({"seeds": 2, "stages": [{"name": "seed_1", "config": "c.py"}], "variants": [{"name": "a"}],
      "mir_stage": None, "score_stage": None}, "stage name 'seed_1' clashes"),
])
def test_bad_seeds_are_one_line(changes, message):
    with pytest.raises(studies.StudyError, match=message) as e:
        studies.from_dict(_study(**changes))
    assert "\n" not in str(e.value)


def test_bad_seed_override_and_recipe_seed_are_one_line(tmp_path):
    study = studies.from_dict(_study(seeds=2, variants=[{"name": "a", "overrides": {"s1": {"seed": "x"}}}]))
    with pytest.raises(studies.StudyError, match=r"a/s1: seed='x' is not an integer"):
        studies.plan(study, str(tmp_path))
    run = studies.plan(studies.from_dict(_study(seeds=2)), str(tmp_path))[1]
    assert run.label == "a/s1"
    studies.runs.check_seed(run, types.SimpleNamespace(seed=0))
    with pytest.raises(studies.StudyError, match="its recipe sets seed=7"):
        studies.runs.check_seed(run, types.SimpleNamespace(seed=7))


# ----- collect and the report on made-up workdirs ----------------------------------------------------

def _fake_run(workdir, ev=None, down=None, steps=2):
    """A finished run's files as collect() reads them: config.json and the final metrics rows."""
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump({"total_steps": steps}, f)
    with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
        f.write(json.dumps({"step": steps, "split": "train", "loss": 9.0}) + "\n")
        if ev is not None:
            f.write(json.dumps({"step": steps, "split": "eval", **ev}) + "\n")
        if down is not None:
            f.write(json.dumps({"step": steps, "split": "downstream", **down}) + "\n")


# (MIR, loss, pope/accuracy, pope/f1) per variant and seed; score = the mean of accuracy and
# f1: a (1, .5), (5, 0); b (3, .25) twice; c (10, .375) twice. Dyadic numbers, so that a's mean
# score ties b's exactly. The score ranks are HAND's, so is its enumeration.
VALUES = {"a": [(1.0, 2.0, 0.75, 0.25), (5.0, 4.0, 0.125, -0.125)],
          "b": [(3.0, 2.5, 0.375, 0.125), (3.0, 3.5, 0.375, 0.125)],
          "c": [(10.0, 1.0, 0.5, 0.25), (10.0, 1.5, 0.5, 0.25)]}


def _fake_study(tmp_path, norms=True):
    d = _study(variants=[{"name": n} for n in VALUES], seeds=2, score_metrics=["pope/accuracy", "pope/f1"])
    study = studies.from_dict(d)
    runs = studies.plan(study, str(tmp_path))
    for r in runs:
        if r.variant == "shared":
            _fake_run(r.workdir)
            continue
        mir, loss, acc, f1 = VALUES[r.variant][r.seed]
        ev = {"loss": loss, "mir": mir, "mir_per_layer": [mir, 2 * mir, 3 * mir + r.seed]}
        if norms:
            ev |= {"mir_vision_norm_per_layer": [10.0 + r.seed, 20.0], "mir_text_norm_per_layer": [1.0, 2.0 + r.seed]}
        _fake_run(r.workdir, ev, {"pope/accuracy": acc, "pope/f1": f1})
    return study, runs


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_collect_with_seeds_schema_means_spread_and_intervals(tmp_path):
    study, runs = _fake_study(tmp_path)
    result = studies.collect(study, runs)
    assert result["n_seeds"] == 2 and [v["name"] for v in result["variants"]] == ["a", "b", "c"]
    for v in result["variants"]:
        seeds = VALUES[v["name"]]
        mirs, losses = [s[0] for s in seeds], [s[1] for s in seeds]
        scores = [(s[2] + s[3]) / 2 for s in seeds]
        assert v["mir"] == pytest.approx(statistics.fmean(mirs))
        assert v["stage1_loss"] == pytest.approx(statistics.fmean(losses))
        assert v["score"] == pytest.approx(statistics.fmean(scores))
        assert v["scores"]["pope"]["accuracy"] == pytest.approx(statistics.fmean(s[2] for s in seeds))
        assert v["std"] == {"mir": pytest.approx(statistics.stdev(mirs)), "stage1_loss": pytest.approx(statistics.stdev(losses)),
                            "score": pytest.approx(statistics.stdev(scores))}
        assert v["mir_per_layer"] == pytest.approx([mirs[0], 2 * mirs[0], 3 * mirs[0] + 0.5] if mirs[0] == mirs[1]
                                                   else [3.0, 6.0, 9.5])
        assert v["vision_norm_per_layer"] == pytest.approx([10.5, 20.0])
        assert v["text_norm_per_layer"] == pytest.approx([1.0, 2.5])
        assert [s["seed"] for s in v["seeds"]] == [0, 1]
        assert v["workdirs"] == v["seeds"][0]["workdirs"] == {"s0": str(tmp_path / "shared" / "s0"),
                                                              "s1": str(tmp_path / v["name"] / "s1")}
        assert v["seeds"][1]["workdirs"]["s1"] == str(tmp_path / v["name"] / "seed_1" / "s1")
        for k, s in enumerate(v["seeds"]):
            assert (s["mir"], s["stage1_loss"]) == (seeds[k][0], seeds[k][1])
            assert s["score"] == pytest.approx(scores[k]) and s["scores"] == {"pope": {"accuracy": seeds[k][2],
                                                                                      "f1": seeds[k][3]}}
            assert s["vision_norm_per_layer"] == [10.0 + k, 20.0]
    mir = result["correlation"]["mir"]
    # The point value is on the means: a (3, .25), b (3, .25), c (10, .375): a and b tie in both.
    assert mir["spearman"] == pytest.approx(1.0) and mir["kendall"] == pytest.approx(1.0)
    # b's and c's seeds agree; a's resampled means are (1, .5), (3, .25), (5, 0): HAND's ranks.
    assert mir["interval"] == {"spearman": pytest.approx([-0.5, 1.0]), "kendall": pytest.approx([-1 / 3, 1.0])}
    assert mir["n_bootstrap"] == 2000 and mir["confidence"] == 0.95
    loss = result["correlation"]["loss"]
    assert set(loss) == {"spearman", "kendall", "interval", "n_bootstrap", "confidence"}
    lo, hi = loss["interval"]["spearman"]
    assert -1 <= lo <= hi <= 1

    written = studies.report.write(result, str(tmp_path))
    assert sorted(os.path.basename(p) for p in written) == ["mir_norms.png", "mir_per_layer.png", "mir_vs_score.png",
                                                            "study.md"]
    md = (tmp_path / "study.md").read_text()
    assert "| a | 3.0000 ± 2.8284 |" in md  # MIR mean and stdev(1, 5) = 2 sqrt 2
    assert "| MIR | 1.000 | [-0.500, 1.000] | 1.000 | [-0.333, 1.000] |" in md and "2 seeds per variant" in md


def test_collect_one_seed_keeps_the_one_seed_values(tmp_path):
    """With one seed, the one-seed keys are that seed's values as they are, nothing is spread,
    no interval, and no norms plot where no run logged the norms."""
    d = _study(variants=[{"name": n} for n in VALUES], score_metrics=["pope/accuracy"])
    study = studies.from_dict(d)
    runs = studies.plan(study, str(tmp_path))
    for r in runs:
        mir, loss, acc, _ = VALUES.get(r.variant, [(0, 0, 0, 0)])[0]
        _fake_run(r.workdir, {"loss": loss, "mir": mir, "mir_per_layer": [mir, 0.1]}, {"pope/accuracy": acc})
    result = studies.collect(study, runs)
    for v in result["variants"]:
        mir, loss, acc, _ = VALUES[v["name"]][0]
        assert (v["mir"], v["stage1_loss"], v["score"], v["mir_per_layer"]) == (mir, loss, acc, [mir, 0.1])
        assert v["std"] == {"mir": None, "stage1_loss": None, "score": None} and len(v["seeds"]) == 1
        assert v["vision_norm_per_layer"] is None and v["text_norm_per_layer"] is None
    assert result["correlation"]["mir"]["interval"] == {"spearman": None, "kendall": None}
    written = [os.path.basename(p) for p in studies.report.write(result, str(tmp_path))]
    assert "mir_norms.png" not in written and "±" not in (tmp_path / "study.md").read_text()


# ----- end to end ----------------------------------------------------------------------------------

def _rows(workdir):
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    ev = [r for r in rows if r["split"] == "eval" and r["step"] == 2][-1]
    down = [r for r in rows if r["split"] == "downstream" and r["step"] == 2][-1]
    return ev, down


def _sign_probabilities(v0, v1):
    """P(+1), P(-1), P(undefined) of the 2-variant rank correlation under the seed resampling of
    two variants with two seeds each, enumerated: a variant's mean is seed 0's, the midpoint or
    seed 1's with probability 1/4, 1/2, 1/4 (v = [(mir, score), (mir, score)])."""
    def means(v):
        (x0, s0), (x1, s1) = v
        return [((x0, s0), 0.25), (((x0 + x1) / 2, (s0 + s1) / 2), 0.5), ((x1, s1), 0.25)]
    p = {1.0: 0.0, -1.0: 0.0, 0.0: 0.0}
    for (xa, sa), pa in means(v0):
        for (xb, sb), pb in means(v1):
            p[float(np.sign((xa - xb) * (sa - sb)))] += pa * pb
    return p


@pytest.mark.slow
def test_two_variant_two_seed_study_end_to_end(tmp_path):
    spec = tmp_path / "two_variants.py"
    spec.write_text(textwrap.dedent(STUDY_FILE.format(small=_SMALL)))
    out = tmp_path / "runs"
    # A one-seed study first: its workdirs are seed 0 of the two-seed study, which adds only seed 1.
    proc = _study_py(f"--study={spec}", f"--workdir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc = _study_py(f"--study={spec}", f"--workdir={out}", "--seeds=2")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for i, label in enumerate(["shared/s0", "lr_low/s1", "lr_high/s1"], 1):
        assert f"[{i}/5] {label}: done, skipped\n" in proc.stdout  # the same commands: nothing to note
    for i, label in enumerate(["lr_low/seed_1/s1", "lr_high/seed_1/s1"], 4):
        assert f"[{i}/5] {label}: running" in proc.stdout
    result = json.loads((out / "study.json").read_text())
    assert result["n_seeds"] == 2
    pairs = []
    for v in result["variants"]:
        assert v["workdirs"] == {"s0": str(out / "shared" / "s0"), "s1": str(out / v["name"] / "s1")}
        per_seed = []
        for k, s in enumerate(v["seeds"]):
            wd = str(out / v["name"] / f"seed_{k}" / "s1") if k else str(out / v["name"] / "s1")
            assert s["seed"] == k and s["workdirs"]["s1"] == wd and s["workdirs"]["s0"] == str(out / "shared" / "s0")
            config = json.loads(open(os.path.join(wd, "config.json")).read())
            assert config["seed"] == k and config["init_from"] == str(out / "shared" / "s0")
            ev, down = _rows(wd)  # the run's own rows, read here
            score = (down["pope/accuracy"] + down["pope/f1"]) / 2
            assert s["mir"] == pytest.approx(ev["mir"]) and s["stage1_loss"] == pytest.approx(ev["loss"])
            assert s["score"] == pytest.approx(score) and s["mir_per_layer"] == pytest.approx(ev["mir_per_layer"])
            assert s["vision_norm_per_layer"] == ev.get("mir_vision_norm_per_layer")
            per_seed.append((ev["mir"], ev["loss"], score))
        (m0, l0, s0), (m1, l1, s1) = per_seed
        assert v["mir"] == pytest.approx((m0 + m1) / 2) and v["score"] == pytest.approx((s0 + s1) / 2)
        # two values: the sample standard deviation is |a - b| / sqrt(2)
        assert v["std"]["mir"] == pytest.approx(abs(m0 - m1) / np.sqrt(2), abs=1e-12)
        assert v["std"]["stage1_loss"] == pytest.approx(abs(l0 - l1) / np.sqrt(2), abs=1e-12)
        assert v["std"]["score"] == pytest.approx(abs(s0 - s1) / np.sqrt(2), abs=1e-12)
        pairs.append([(m0, s0), (m1, s1)])
    # Two seeds give different runs (data order and content follow config.seed).
    assert pairs[0][0][0] != pairs[0][1][0]
    corr = result["correlation"]["mir"]
    assert set(corr["interval"]) == {"spearman", "kendall"} and corr["n_bootstrap"] == 2000
    p = _sign_probabilities(*pairs)
    defined = p[1.0] + p[-1.0]
    if corr["spearman"] is not None and defined > 0:
        lo, hi = corr["interval"]["spearman"]
        assert lo <= corr["spearman"] <= hi
        # With two variants every defined coefficient is +-1: the bounds follow from the
        # enumerated probabilities wherever they are far from the 2.5 % cut.
        for sign, bound in ((-1.0, lo), (1.0, hi)):
            share = p[sign] / defined
            if share == 0:
                assert bound == -sign
            elif share > 0.1:
                assert bound == sign
    md = (out / "study.md").read_text()
    assert md.count("| lr_") == 2 and "2 seeds per variant" in md
    assert (out / "mir_vs_score.png").stat().st_size > 0
    has_norms = any(s["vision_norm_per_layer"] for v in result["variants"] for s in v["seeds"])
    assert (out / "mir_norms.png").exists() == has_norms
