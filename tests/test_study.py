"""study.py and mir_jax.studies: the rank correlations equal scipy.stats; a study config's
mistakes are one line; a 2-variant study with a shared first stage runs end to end through
real train.py runs, writes a study.json of the documented schema whose numbers are the runs'
own final metrics rows, and skips every finished run when rerun."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import scipy.stats

from mir_jax import studies
from mir_jax.data.miniature import BASE_DIR as MINIATURE_BASE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----- correlation helpers against scipy ---------------------------------------------------------

@pytest.mark.parametrize("case", range(40))
def test_correlations_equal_scipy(case):
    rng = np.random.default_rng(case)
    n = int(rng.integers(3, 12))
    if case % 3 == 0:  # ties in both variables
        x, y = rng.integers(0, 4, n).astype(float), rng.integers(0, 3, n).astype(float)
    else:
        x = rng.normal(size=n)
        y = (-0.8 if case % 2 else 0.3) * x + rng.normal(size=n)
    want_rho = scipy.stats.spearmanr(x, y).statistic
    want_tau = scipy.stats.kendalltau(x, y).statistic  # tau-b, scipy's default
    if np.isnan(want_rho):
        assert np.isnan(studies.spearman(x, y))
    else:
        np.testing.assert_allclose(studies.spearman(x, y), want_rho, rtol=1e-12, atol=1e-12)
    if np.isnan(want_tau):
        assert np.isnan(studies.kendall(x, y))
    else:
        np.testing.assert_allclose(studies.kendall(x, y), want_tau, rtol=1e-12, atol=1e-12)


def test_correlations_hand_cases():
    assert studies.spearman([1, 2, 3, 4], [8, 6, 4, 2]) == pytest.approx(-1.0)
    assert studies.kendall([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)  # C=2, D=1 of 3 pairs
    assert np.isnan(studies.spearman([1, 1, 1], [1, 2, 3]))  # a constant variable: undefined
    assert np.isnan(studies.kendall([1.0], [2.0]))
    # A NaN pair is dropped: what remains is perfectly ordered.
    assert studies.spearman([1, 2, np.nan, 4], [1, 2, 0, 3]) == pytest.approx(1.0)


# ----- the study spec --------------------------------------------------------------------------

def _stages():
    return [{"name": "s0", "config": "configs/llava15_pretrain.py:runlocal", "shared": True},
            {"name": "s1", "config": "configs/llava15_pretrain.py:runlocal", "init_from": "s0",
             "overrides": {"total_steps": 2, "optimizer.lr": 0.01}}]


def _study(**changes):
    d = {"name": "t", "stages": _stages(), "variants": [{"name": "a", "overrides": {"s1": {"optimizer.lr": 0.1}}},
                                                        {"name": "b", "overrides": {"all": {"seed": 3}}}],
         "mir_stage": "s1", "score_stage": "s1", "score_metrics": ["pope/accuracy"]}
    d.update(changes)
    return d


@pytest.mark.parametrize("changes, message", [
    ({"variants": [{"name": "a", "overrides": {"s9": {"seed": 1}}}]}, "overrides stage 's9'"),
    ({"variants": [{"name": "a", "overrides": {"s0": {"seed": 1}}}]}, "overrides the shared stage 's0'"),
    ({"variants": [{"name": "a"}, {"name": "a"}]}, "used twice"),
    ({"score_metrics": ["accuracy"]}, "'evaluator/metric'"),
    ({"mir_stage": "s5"}, "mir_stage='s5' is not a stage"),
    ({"stages": [{"name": "s1", "config": "c.py", "init_from": "s0"}]}, "not an earlier stage"),
    ({"stages": [{"name": "s1", "config": "c.py", "epochs": 2}]}, "keys ['epochs'] unknown"),
    ({"varients": []}, "study keys ['varients'] unknown"),
])
def test_bad_study_is_one_line(changes, message):
    with pytest.raises(studies.StudyError, match=message.replace("[", r"\[").replace("(", r"\(")) as e:
        studies.from_dict(_study(**changes))
    assert "\n" not in str(e.value)


def test_plan_layout_chaining_and_override_order(tmp_path):
    study = studies.from_dict(_study())
    runs = studies.plan(study, str(tmp_path), studies.parse_set(["s1.total_steps=7", "all.tokenizer=byte"]))
    assert [r.label for r in runs] == ["shared/s0", "a/s1", "b/s1"]
    s0, a, b = runs
    assert s0.workdir == str(tmp_path / "shared" / "s0") and a.workdir == str(tmp_path / "a" / "s1")
    assert a.overrides["init_from"] == b.overrides["init_from"] == s0.workdir and a.after == (s0.workdir,)
    # stage < variant "all" < variant stage < --set all < --set stage
    assert a.overrides["optimizer.lr"] == 0.1 and b.overrides["optimizer.lr"] == 0.01
    assert b.overrides["seed"] == 3 and "seed" not in s0.overrides
    assert a.overrides["total_steps"] == "7" and s0.overrides["tokenizer"] == "byte"
    argv = studies.command(a, REPO)
    assert argv[1] == os.path.join(REPO, "train.py")
    assert f"--config.init_from={s0.workdir}" in argv and "--config.optimizer.lr=0.1" in argv
    assert studies.runs.format_value([{"name": "pope"}]) == '[{"name": "pope"}]'
    assert studies.runs.format_value(True) == "true"
    with pytest.raises(studies.StudyError, match="--set names stage"):
        studies.plan(study, str(tmp_path), studies.parse_set(["s7.seed=1"]))
    with pytest.raises(studies.StudyError, match="STAGE.KEY=VALUE"):
        studies.parse_set(["seed=1"])


# ----- end to end --------------------------------------------------------------------------------

_SMALL = {"total_steps": 2, "checkpoint.every": 2, "log_every": 1,
          "evals": {"loss": {"every": 0, "num_samples": 16}, "mir": {"every": 0, "num_samples": 8, "seq_len": 384}}}

STUDY_FILE = '''
def get_study(arg=None):
    small = {small!r}
    return {{
        "name": "two_variants",
        "stages": [
            {{"name": "s0", "config": "configs/llava15_pretrain.py:runlocal", "shared": True,
             "overrides": small}},
            {{"name": "s1", "config": "configs/llava15_pretrain.py:runlocal", "init_from": "s0",
             "overrides": {{**small, "init_parts": "all",
                           "evals": {{**small["evals"], "pope": {{"every": 0, "num_samples": 8}}}}}}}},
        ],
        "variants": [{{"name": "lr_low", "overrides": {{"s1": {{"optimizer.lr": 1e-4}}}}}},
                     {{"name": "lr_high", "overrides": {{"s1": {{"optimizer.lr": 3e-2}}}}}}],
        "mir_stage": "s1", "score_stage": "s1", "score_metrics": ["pope/accuracy", "pope/f1"],
    }}
'''


def _study_py(*args):
    return subprocess.run([sys.executable, os.path.join(REPO, "study.py"), *args], cwd=REPO,
                          capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def finished_study(tmp_path_factory):
    base = tmp_path_factory.mktemp("study")
    spec = base / "two_variants.py"
    spec.write_text(textwrap.dedent(STUDY_FILE.format(small=_SMALL)))
    out = base / "runs"
    proc = _study_py(f"--study={spec}", f"--workdir={out}")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return spec, out, proc


def _final_rows(workdir):
    rows = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
    ev = [r for r in rows if r["split"] == "eval" and r["step"] == 2][-1]
    down = [r for r in rows if r["split"] == "downstream" and r["step"] == 2][-1]
    return ev, down


@pytest.mark.slow
def test_study_runs_and_writes_the_schema(finished_study):
    spec, out, proc = finished_study
    assert "[1/3] shared/s0: running" in proc.stdout and "[3/3] lr_high/s1: running" in proc.stdout
    result = json.loads((out / "study.json").read_text())
    assert set(result) >= {"study", "variants", "correlation"} and result["study"] == "two_variants"
    assert set(result["correlation"]) == {"mir", "loss"}
    for pred in ("mir", "loss"):  # (one seed: no spread to resample, so no interval)
        assert set(result["correlation"][pred]) >= {"spearman", "kendall"}
        assert result["correlation"][pred]["interval"] == {"spearman": None, "kendall": None}
    assert [v["name"] for v in result["variants"]] == ["lr_low", "lr_high"]
    for v in result["variants"]:
        assert set(v) >= {"name", "overrides", "workdirs", "mir", "mir_per_layer", "stage1_loss", "scores", "score"}
        assert v["workdirs"] == {"s0": str(out / "shared" / "s0"), "s1": str(out / v["name"] / "s1")}
        ev, down = _final_rows(v["workdirs"]["s1"])  # the run's own rows, read here
        assert v["mir"] == pytest.approx(ev["mir"]) and v["stage1_loss"] == pytest.approx(ev["loss"])
        assert v["mir_per_layer"] == pytest.approx(ev["mir_per_layer"]) and len(v["mir_per_layer"]) == 8  # the miniature LLM's layers
        assert v["scores"]["pope"]["accuracy"] == pytest.approx(down["pope/accuracy"])
        assert v["score"] == pytest.approx((down["pope/accuracy"] + down["pope/f1"]) / 2)
        # The shared stage seeded this run: its config records the shared workdir.
        config = json.loads(open(os.path.join(v["workdirs"]["s1"], "config.json")).read())
        assert config["init_from"] == str(out / "shared" / "s0")
    assert [v["overrides"] for v in result["variants"]][1] == {"s1": {"optimizer.lr": 0.03}}
    # Two variants: the rank correlations are +-1 in the direction the numbers say.
    m = [v["mir"] for v in result["variants"]]
    s = [v["score"] for v in result["variants"]]
    if m[0] != m[1] and s[0] != s[1]:
        sign = float(np.sign((m[0] - m[1]) * (s[0] - s[1])))
        corr = result["correlation"]["mir"]
        assert (corr["spearman"], corr["kendall"]) == (pytest.approx(sign), pytest.approx(sign))
    assert (out / "study.md").read_text().count("| lr_") == 2
    assert (out / "mir_vs_score.png").stat().st_size > 0 and (out / "mir_per_layer.png").stat().st_size > 0


@pytest.mark.slow
def test_rerun_skips_finished_runs(finished_study):
    spec, out, _ = finished_study
    metrics = out / "lr_low" / "s1" / "metrics.jsonl"
    before = metrics.read_text()
    proc = _study_py(f"--study={spec}", f"--workdir={out}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count("done, skipped") == 3 and "running" not in proc.stdout
    assert metrics.read_text() == before


@pytest.mark.slow
def test_print_commands_and_collect(finished_study, tmp_path):
    spec, out, _ = finished_study
    proc = _study_py(f"--study={spec}", f"--workdir={out}", "--print_commands")
    lines = proc.stdout.strip().splitlines()
    assert proc.returncode == 0 and len(lines) == 3
    assert all(x.startswith("python ") and "train.py --config=" in x for x in lines)
    assert f"--config.init_from={out / 'shared' / 's0'}" in lines[1]
    (out / "study.json").unlink()
    proc = _study_py(f"--study={spec}", f"--workdir={out}", "--collect")
    assert proc.returncode == 0 and "running" not in proc.stdout
    assert len(json.loads((out / "study.json").read_text())["variants"]) == 2
    # --collect on a directory with no runs: every score missing, one line, exit 1.
    proc = _study_py(f"--study={spec}", f"--workdir={tmp_path / 'empty'}", "--collect")
    assert proc.returncode == 1 and "no score yet" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_bad_override_is_one_line_before_anything_runs(tmp_path):
    spec = tmp_path / "bad.py"
    spec.write_text(textwrap.dedent('''
        def get_study(arg=None):
            return {"name": "bad", "stages": [{"name": "s1", "config": "configs/llava15_pretrain.py:runlocal"}],
                    "variants": [{"name": "a", "overrides": {"s1": {"optimizer.learning_rate": 0.1}}}],
                    "score_metrics": ["pope/accuracy"]}
    '''))
    proc = _study_py(f"--study={spec}", f"--workdir={tmp_path / 'runs'}")
    assert proc.returncode == 1 and not (tmp_path / "runs").exists()
    line, = proc.stderr.strip().splitlines()
    assert line.startswith("study.py: a/s1: ") and "optimizer.learning_rate" in line


def test_shipped_studies_resolve(tmp_path):
    """Every run of every shipped study, miniature and full size, parses as train.py would parse
    it, and the studies are what their docstrings say."""
    seen = {}
    for name in ("mir_vs_sft", "data_scale", "mm1_ablation"):
        for arg in (":runlocal", ""):
            study = studies.load(f"configs/studies/{name}.py{arg}", REPO)
            runs = studies.plan(study, str(tmp_path))
            seen[name + arg] = {r.label: studies.runs.resolve_config(r, REPO) for r in runs}
    mvs = seen["mir_vs_sft:runlocal"]
    assert len([k for k in mvs if k.endswith("/stage1")]) >= 6
    # Every stage 1 starts from the shipped base; no study trains a stage 0.
    assert {mvs[k].init_from for k in mvs if k.endswith("/stage1")} == {MINIATURE_BASE}
    assert not any("stage0" in k for name in seen for k in seen[name])
    assert all(mvs[k].init_parts == "vision,llm" and mvs[k].trainable.vision == "none" for k in mvs if k.endswith("/stage1"))
    assert mvs["linear_connector/sft"].model.connector.name == "linear" and mvs["moca/sft"].model.moca
    sft = {k: v for k, v in mvs.items() if k.endswith("/sft") and not k.startswith(("linear", "moca"))}
    plain = [json.loads(c.to_json()) for c in sft.values()]
    assert len({p.pop("init_from") for p in plain}) == len(sft)  # each SFT starts from its own stage 1
    assert all(p == plain[0] for p in plain)  # and is otherwise the same run
    # The miniature's SFT: a modest budget, and captioning among the scores (the one benchmark
    # there that moves with stage 1).
    assert plain[0]["total_steps"] == 150 and "caption" in plain[0]["evals"]
    assert seen["mir_vs_sft"]["full/sft"].total_steps == 5198  # full size: the recipe's own length
    scales = [c.data.sources[0]["data_scale"] for k, c in seen["data_scale"].items() if k.endswith("/stage1")]
    assert len(scales) == 4 and max(scales) / min(scales) >= 30
    assert seen["mir_vs_sft"]["data_1pct/stage1"].data.sources[0]["data_scale"] == 5_581
    mm1 = seen["mm1_ablation:runlocal"]
    assert {(c.model.connector.name, c.model.connector.num_tokens) for k, c in mm1.items() if "pretrain" in k} == {
        (c, n) for c in ("avgpool", "attnpool", "c_abstractor") for n in (4, 16)}


def test_bad_study_path_is_one_line(tmp_path):
    proc = _study_py(f"--study={tmp_path / 'nope.py'}", f"--workdir={tmp_path}")
    assert proc.returncode == 1 and proc.stderr.strip().splitlines() == [
        f"study.py: --study '{tmp_path / 'nope.py'}': no file {tmp_path / 'nope.py'}"]


def test_individual_select_greedy_pass(tmp_path):
    """The greedy pass on made-up scores: candidates by individual gain, each kept only if it
    improves the score; derived variants appear one round at a time."""
    study = studies.load("configs/studies/individual_select.py:runlocal", REPO)
    base = 0.40
    single = {"counting": 0.50, "attributes": 0.45, "yes_no": 0.55, "choice": 0.38, "redundant": 0.40,
              "noisy": 0.20}
    results = {"base": {"score": base}, **{f"plus_{c}": {"score": s} for c, s in single.items()}, "all": {"score": 0.47}}
    assert study.derive({"base": {"score": base}}) == []  # singles not scored yet: nothing to derive
    # Order by gain: yes_no (+.15), counting (+.10), attributes (+.05); choice, redundant, noisy <= 0.
    (first,) = study.derive(results)
    assert first["name"] == "select_yes_no+counting"
    assert [s["name"] for s in first["overrides"]["sft"]["data.sources"]] == ["qa_base", "qa_yes_no", "qa_counting"]
    results[first["name"]] = {"score": 0.60}  # improves on 0.55: kept
    (second,) = study.derive(results)
    assert second["name"] == "select_yes_no+counting+attributes"
    results[second["name"]] = {"score": 0.58}  # worse than 0.60: dropped, and the pass is over
    assert study.derive(results) == []
    summary = study.summarize(results)
    assert summary["complete"] and summary["selected"] == ["yes_no", "counting"]
    assert summary["selected_score"] == 0.60 and summary["all_score"] == 0.47
    assert summary["individual_gain"]["noisy"] == pytest.approx(-0.20)
    round_one = {k: v for k, v in results.items() if not k.startswith("select_")}
    grown = studies.with_derived(study, round_one)
    assert [v.name for v in grown.variants][-2:] == ["all", "select_yes_no+counting"]
    assert studies.with_derived(grown, round_one) is grown  # nothing new: the rounds end


def _execute_notebook(name, env):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(os.path.join(REPO, "notebooks", name), as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                                resources={"metadata": {"path": os.path.join(REPO, "notebooks")}}).execute()
    finally:
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    return nb


@pytest.mark.slow
def test_notebooks_execute(finished_study):
    """Both notebooks run top to bottom: the quick start as it is, mir_predicts_sft on this
    test's study (MIR_STUDY_DIR), so neither can drift from the code."""
    _, out, _ = finished_study
    nb = _execute_notebook("mir_predicts_sft.ipynb", {"MIR_STUDY_DIR": str(out)})
    text = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))
    assert "two_variants - 2 variants" in text and "mir   vs score: Spearman" in text and "MIR" in text.splitlines()[-1]
    _execute_notebook("mir_quickstart.ipynb", {"MPLBACKEND": "Agg"})
