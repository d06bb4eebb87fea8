"""configs/stage0.py (the miniature's pre-trained vision tower and LLM) and its chaining into
stage 1: the recipe trains everything on captions + text + text_qa for a few steps, its
checkpoint (no frozen item: nothing is frozen) resumes and loads, and llava15_pretrain:runlocal
with init_from=that workdir starts from exactly its vision tower and LLM, as orbax wrote them,
with a fresh connector."""

from __future__ import annotations

import numpy as np
import orbax.checkpoint as ocp
import pytest

from configs import llava15_pretrain, llava15_sft, stage0
from mir_jax.train.loop import TrainResult, train_and_evaluate
from tests.helpers import flat_params, start_params


def _short(c, steps: int):
    c.total_steps, c.log_every = steps, 1
    c.checkpoint.async_save = False
    c.evals = {}  # no evaluation, no held-out or MIR batches to build
    c.data.num_threads = 1
    return c


@pytest.fixture(scope="module")
def s0(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("stage0")
    result = train_and_evaluate(_short(stage0.get_config("runlocal,llm"), 3), str(workdir))
    assert result.step == 3 and np.isfinite(result.loss)
    return workdir


def test_the_recipe():
    llm, vision = stage0.get_config("runlocal,llm"), stage0.get_config("runlocal,vision")
    for c in (llm, vision):
        assert (c.trainable.vision, c.trainable.llm, c.trainable.connector) == ("all", "all", True)
        assert c.init_parts == "all"
        # The same model as stage 1's (so init_from's shapes match) and SFT's system prompt.
        assert c.model.to_dict() == llava15_pretrain.get_config("runlocal").model.to_dict()
        assert c.data.system == llava15_sft.get_config("runlocal").data.system
    # The llm phase starts from nothing, on told scenes alone; the vision phase must be given it.
    assert llm.init_from == "" and [s["kind"] for s in llm.data.sources] == ["text_qa"]
    assert vision.init_from is None
    kinds = {s["kind"]: s for s in vision.data.sources}
    assert set(kinds) == {"caption", "text", "text_qa"}
    assert kinds["caption"]["template"] == "plain" and kinds["text_qa"]["template"] == "vicuna_v1"
    hard = [s for s in vision.data.sources if s.get("questions")]
    assert len(hard) == 1 and set(hard[0]["questions"]) == {"exists", "choice"} and hard[0]["seed"] != vision.seed
    assert llava15_pretrain.get_config("runlocal").init_parts == "vision,llm"
    # The letter phases: the vision phase's model and settings with lettered choice as the given
    # share of the data, the rest told scenes of every family with no repeated question, 5% captions.
    for arg, share, steps in (("runlocal,choice", 0.75, 600), ("runlocal,settle", 0.5, 1500)):
        c = stage0.get_config(arg)
        assert c.init_from is None and c.model.to_dict() == vision.model.to_dict()
        assert (c.total_steps, c.optimizer.lr, c.data.system) == (steps, 2e-3, vision.data.system)
        weights = {(s["kind"], tuple(s.get("questions", ()))): s["weight"] for s in c.data.sources}
        assert weights == pytest.approx({("caption", ()): 0.05, ("text_qa", ()): 0.95 - share,
                                         ("text_qa", ("choice",)): share})
        assert all(s["distinct_questions"] for s in c.data.sources if s["kind"] == "text_qa")
    for arg, match in ((None, "runlocal-only.*build_stage1"), ("runlocal", "runlocal,llm.*runlocal,vision"),
                       ("runlocal,llm,vision", "runlocal,llm.*runlocal,vision")):
        with pytest.raises(ValueError, match=match) as e:
            stage0.get_config(arg)
        assert "\n" not in str(e.value)


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_stage0_trains_everything_and_resumes(s0):
    ckpt = s0 / "checkpoints" / "3"
    assert (ckpt / "state").is_dir() and not (ckpt / "frozen").exists()  # nothing is frozen
    again = train_and_evaluate(_short(stage0.get_config("runlocal,llm"), 3), str(s0))  # restores step 3
    assert again == TrainResult(step=3, already_done=True)


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_stage1_starts_from_stage0_with_a_fresh_connector(s0, tmp_path):
    saved = flat_params(ocp.StandardCheckpointer().restore(str(s0 / "checkpoints" / "3" / "state"))["params"])
    c = _short(llava15_pretrain.get_config("runlocal"), 2)
    c.init_from = str(s0)  # init_parts: the recipe's default, vision,llm
    got, fresh = start_params(c, tmp_path / "s1")
    assert got.keys() == saved.keys() == fresh.keys()
    parts = {k.split("/")[0] for k in got}
    assert parts == {"vision_tower", "connector", "language_model"}
    for k in got:
        if k.startswith("connector/"):
            np.testing.assert_array_equal(got[k], fresh[k], err_msg=k)
        else:
            np.testing.assert_array_equal(got[k], saved[k], err_msg=k)
    # Stage 0 did train (3 steps) what stage 1 takes, and its connector is not what stage 1 starts with.
    assert all(not np.array_equal(saved[k], fresh[k]) for k in got if k.endswith("embed_tokens/embedding"))
    assert any(not np.array_equal(saved[k], got[k]) for k in got if k.startswith("connector/"))
