"""The evaluator plumbing: prompt layouts token by token, few-shot draws, the embedded
benchmark against its scenes, likelihood scoring against a hand-built logit table, the
evaluators' scores on hand-checked answers, the registry's one-line errors, and the
evaluators in the training loop (a trained runlocal model against an untrained one)."""

from __future__ import annotations

import dataclasses
import json
import types

import numpy as np
import pytest
from flax import nnx

from mir_jax.data import ByteTokenizer, ImageConfig, load_tokenizer
from mir_jax.data import synthetic as syn
from mir_jax.evals import EvalModel, build_evals, get_evaluator
from mir_jax.evals import benchmark as bench
from mir_jax.evals.fewshot import select_examples
from mir_jax.evals.predict import continuation_logprobs
from mir_jax.evals.prompts import encode
from tests import train_fixtures

TOK = ByteTokenizer()
K = 4  # image tokens per image in the stub configs below
SYSTEM = "Sys."


@dataclasses.dataclass(frozen=True)
class _TextConfig:
    max_position_embeddings: int = 512


@dataclasses.dataclass(frozen=True)
class _StubConfig:
    """The config fields the prompt and scoring code read (hashable, as nnx needs)."""

    num_image_tokens: int = K
    text: _TextConfig = _TextConfig()


def _stub_model(template: str) -> EvalModel:
    """An EvalModel whose `model` only carries a config."""
    return EvalModel("stub", types.SimpleNamespace(config=_StubConfig()), TOK, ImageConfig(size=8), template, SYSTEM)


def _img():
    return np.zeros((8, 8, 3), np.uint8)


def _ids(*parts) -> list[int]:
    """Hand-built token ids: str -> its bytes, "IMG" -> K image tokens, "BOS"/"EOS"."""
    out = []
    for p in parts:
        out += ([TOK.bos_id] if p == "BOS" else [TOK.eos_id] if p == "EOS"
                else [TOK.image_token_id] * K if p == "IMG" else TOK.encode(p))
    return out


# ----- prompts -----------------------------------------------------------------------------------

def test_vicuna_few_shot_prompt_token_by_token():
    m = _stub_model("vicuna_v1")
    p = encode(m, "How many?", _img(), examples=[("What colour?", "Red.", _img())])
    want = _ids("BOS", f"{SYSTEM} USER: ", "IMG", "\nWhat colour? ASSISTANT: Red.", "EOS",
                "USER: ", "IMG", "\nHow many? ASSISTANT: ")
    assert p.ids.tolist() == want
    assert len(p.images) == 2 and p.stop == ()
    # With an answer: the same prompt, then the answer's tokens, then eos (not scored).
    a = encode(m, "How many?", _img(), examples=[("What colour?", "Red.", _img())], answer="Two.")
    assert a.ids.tolist() == want + _ids("Two.", "EOS")
    assert (a.answer_start, a.answer_end) == (len(want), len(want) + 4)


def test_document_few_shot_prompt_and_plain_zero_shot_caption():
    m = _stub_model("plain")
    p = encode(m, "Question: How many? Answer: ", _img(),
               examples=[("Question: What colour? Answer: ", "red", _img())])
    assert p.ids.tolist() == _ids("BOS", "IMG", "Question: What colour? Answer: red\n", "IMG",
                                  "Question: How many? Answer: ")
    assert p.stop == ("\n",)
    # LLaVA's stage-1 caption prompt: bos and the image, nothing else.
    assert encode(m, "", _img()).ids.tolist() == _ids("BOS", "IMG")


def test_few_shot_examples_are_deterministic_and_never_the_query():
    support = [{"question_id": str(i), "image": f"/img/{i % 5}.png"} for i in range(12)]
    query = {"question_id": "3", "image": "/img/3.png"}
    draws = [select_examples(support, query, 4, seed=0) for _ in range(2)]
    assert draws[0] == draws[1]
    for e in draws[0]:
        assert e["question_id"] != "3" and e["image"] != "/img/3.png"  # same id or same image file
    assert len({e["question_id"] for e in draws[0]}) == 4
    assert select_examples(support, query, 4, seed=1) != draws[0]  # the seed matters
    # Only 12 - 2 = 10 records qualify (records 3 and 8 hold the query's image file).
    assert len(select_examples(support, query, 10)) == 10
    with pytest.raises(ValueError, match="the support set has 10"):
        select_examples(support, query, 11)


# ----- the embedded benchmark ---------------------------------------------------------------------

def _groups(task, index):
    scene, _, _ = bench._scene(task, 0, index, 32)
    return scene


def test_embedded_vqa_answers_match_their_scenes():
    records = bench.embedded_task("vqa", 80, image_size=32)
    kinds = {r["kind"] for r in records}
    assert kinds == {"count", "colour", "shape", "position"}
    for i, r in enumerate(records):
        scene = _groups("vqa", i)
        a = r["answers"][0]
        if r["kind"] == "position":
            assert r["answers"] == [a] * 5 + [f"on the {a}"] * 5
        else:
            assert r["answers"] == [a] * 10
        if r["kind"] == "count":
            colour = r["question"].split()[2]
            (g,) = [g for g in scene if g["colour"] == colour]
            assert a == ["zero", "one", "two", "three"][g["count"]]
        elif r["kind"] == "colour":
            assert a in {g["colour"] for g in scene}
        elif r["kind"] == "position":
            colour = r["question"].split()[3]
            (g,) = [g for g in scene if g["colour"] == colour]
            assert a == g["side"] and len(scene) == 2


def test_embedded_vqa_accepts_the_instruction_datas_answer_forms():
    # The qa corpus answers "On the left." / "Two." / "A circle."; the benchmark's human-style
    # answers must give those full credit, and the other side none (hand-computed: 5 of 10
    # answers match either form, so every leave-one-out subset has >= 4 matches -> 1.0). The
    # embedded records are scored with both sides normalized (metric "normalized" = lmms-eval's
    # rule), as no official scorer exists for them.
    from functools import partial

    from mir_jax.evals.answers import vqa_accuracy as _vqa

    vqa_accuracy = partial(_vqa, scoring="lmms_eval")
    records = bench.embedded_task("vqa", 80, image_size=32)
    assert {r["metric"] for r in records} == {"normalized"}
    positions = [r for r in records if r["kind"] == "position"]
    assert positions
    for r in positions:
        side = r["answers"][0]
        other = {"left": "right", "right": "left"}[side]
        assert vqa_accuracy(f"On the {side}.", r["answers"]) == 1.0
        assert vqa_accuracy(side.capitalize() + ".", r["answers"]) == 1.0
        assert vqa_accuracy(f"On the {other}.", r["answers"]) == 0.0
    for r in records:
        if r["kind"] == "count":
            assert vqa_accuracy(r["answers"][0].capitalize() + ".", r["answers"]) == 1.0


def test_caption_budget_fits_the_longest_reference():
    # Byte tokenizer: one token per character, so the budget is the longest reference's length
    # in characters plus the slack (capital, full stop, eos), counted here from the strings.
    records = bench.embedded_task("caption", 60, image_size=32)
    longest = max(len(c) for r in records for c in r["captions"])
    assert longest > 48  # the old fixed budget cut these
    m = _stub_model("vicuna_v1")
    assert get_evaluator("caption").max_new_tokens(m, records) == longest + 4
    assert get_evaluator("caption", max_new_tokens=20).max_new_tokens(m, records) == 20


def test_embedded_pope_is_balanced_and_true_to_the_scene():
    records = bench.embedded_task("pope", 40, image_size=32)
    for cat in ("random", "adversarial"):
        labels = [r["label"] for r in records if r["category"] == cat]
        assert labels.count("yes") == labels.count("no") == 10
    for i, r in enumerate(records):
        words = r["question"].split()  # "Is there a {colour} {kind} in the image?"
        colour, kind = words[3], words[4]
        present = any(g["colour"] == colour and g["kind"] == kind for g in _groups("pope", i))
        assert present == (r["label"] == "yes")
        if r["label"] == "no" and r["category"] == "adversarial":
            assert kind in {g["kind"] for g in _groups("pope", i)}  # a shape that IS there


def test_embedded_multiple_choice_answer_is_right_and_support_is_disjoint():
    records = bench.embedded_task("multiple_choice", 30, image_size=32)
    for i, r in enumerate(records):
        assert len(set(r["options"])) == 4
        right = r["options"][r["answer"]]
        scene = _groups("multiple_choice", i)
        q = r["question"]
        if q.startswith("What colour"):
            assert right in {g["colour"] for g in scene}
        elif q.startswith("How many"):
            (g,) = [g for g in scene if g["colour"] == q.split()[2]]
            assert right == syn.NUMBERS[g["count"]]
        else:
            (g,) = [g for g in scene if g["colour"] == q.split()[4]]  # "What shape are the red objects?"
            assert right == g["kind"]
    support = bench.embedded_task("multiple_choice", 30, image_size=32, support=True)
    assert not {r["question_id"] for r in support} & {r["question_id"] for r in records}
    assert not any(np.array_equal(a["image"], b["image"]) for a in support for b in records)


# ----- likelihood scoring against a hand-built table -------------------------------------------------

class TableLM(nnx.Module):
    """next-token logits = table[current token]: a bigram model with a known answer."""

    def __init__(self, table):
        self.table = nnx.Param(np.asarray(table, np.float32))
        self.config = _StubConfig()

    def __call__(self, input_ids, pixel_values=None, image_mask=None, attention_mask=None):
        return types.SimpleNamespace(logits=self.table[...][input_ids])


def test_likelihood_picks_the_option_the_logit_table_favours():
    rng = np.random.default_rng(0)
    table = rng.normal(size=(TOK.vocab_size, TOK.vocab_size))
    space, b = TOK.encode(" ")[0], TOK.encode("b")[0]
    table[space, b] += 6.0  # after "ASSISTANT: " the table strongly prefers 'b'
    m = EvalModel("table", TableLM(table), TOK, ImageConfig(size=8), "vicuna_v1", SYSTEM)
    options = ["apple", "berry", "cocoa"]  # equal lengths: the first letter decides
    prompts = [encode(m, "Which fruit?", None, answer=o) for o in options]
    sums, counts = continuation_logprobs(m, prompts, batch_size=2)

    def logp(prev, tok):  # float64 log-softmax of the table row, by hand
        row = table[prev].astype(np.float64)
        return row[tok] - np.log(np.exp(row - row.max()).sum()) - row.max()

    for p, o, got, n in zip(prompts, options, sums, counts):
        ids = p.ids.tolist()
        want = sum(logp(ids[t - 1], ids[t]) for t in range(p.answer_start, p.answer_end))
        assert n == len(o) and got == pytest.approx(want, abs=1e-4)
    assert int(np.argmax(sums)) == 1

    # The multiple-choice evaluator's likelihood mode on a file with those options.
    mc = get_evaluator("multiple_choice", mode="likelihood", batch_size=2)
    mc.records = lambda model: [{"question_id": "q", "image": None, "question": "Which fruit?",
                                 "options": options, "answer": 1, "hint": None}]
    res = mc.run(m)
    assert res.scores["likelihood_accuracy"] == 1.0 and res.details["likelihood_choices"] == [1]
    # A record without an answer (MMBench's test split) gets its choice but is not scored: with
    # a second answered record whose answer is wrong ("cocoa"), the accuracy is 1 of 2.
    mc.records = lambda model: [
        {"question_id": q, "image": None, "question": "Which fruit?", "options": options, "answer": a, "hint": None}
        for q, a in (("q", 1), ("test", None), ("r", 2))]
    res = mc.run(m)
    assert res.details["likelihood_choices"] == [1, 1, 1] and res.details["unscored"] == 1
    assert res.scores["likelihood_accuracy"] == 0.5 and res.scores["num_samples"] == 3


# ----- evaluators' scoring and errors --------------------------------------------------------------

def test_vqa_and_pope_scores_on_hand_checked_answers():
    vqa = get_evaluator("vqa")
    records = [{"answers": ["2"] * 10, "kind": "count"}, {"answers": ["red"] * 3 + ["blue"] * 7, "kind": "colour"},
               {"answers": ["dog"], "metric": "exact_match"}, {"answers": ["2"] * 10, "kind": "count"}]
    scores, details = vqa.score(records, ["Two.", "red", "dog.", "2"])
    # vqaEval.py: 0 ("Two." against ten identical "2" is compared unnormalized) + 0.9 (3 of 10
    # said red: 7 subsets keep 3 -> 1, 3 keep 2 -> 2/3) + 1 (GQA: "dog." -> "dog") + 1.
    assert scores["accuracy"] == pytest.approx((0 + (7 + 3 * 2 / 3) / 10 + 1 + 1) / 4)
    assert details["per_kind"]["count"] == 0.5
    pope = get_evaluator("pope")
    recs = [{"label": x, "category": c} for x, c in zip("yes yes no no".split(), ["random", "random", "adversarial", "adversarial"])]
    scores, details = pope.score(recs, ["Yes.", "No, there is not.", "Yes", "no"])
    # random: TP 1 ("Yes."), FN 1 ("not"): accuracy 1/2, precision 1/1, recall 1/2, F1 2/3,
    # yes ratio 1/2. adversarial: FP 1 ("Yes"), TN 1: accuracy 1/2, precision 0/1, recall 0/0 ->
    # 0, F1 0, yes ratio 1/2. The headline is their mean: 1/2, 1/2, 1/4, 1/3, 1/2.
    assert [scores[k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == pytest.approx(
        [0.5, 0.5, 0.25, 1 / 3, 0.5])
    assert details["per_category"]["random"]["recall"] == 0.5
    # Pooled (TP 1, FN 1, FP 1, TN 1): 0.5 each.
    assert [details["pooled"][k] for k in ("accuracy", "precision", "recall", "f1", "yes_ratio")] == [0.5] * 5


def test_registry_and_options_fail_in_one_line():
    for call, message in [(lambda: get_evaluator("vqq"), "unknown evaluator 'vqq'"),
                          (lambda: get_evaluator("vqa", shot=4), "unknown option(s) ['shot']"),
                          (lambda: get_evaluator("pope", shots=4), "shots=4 is not supported"),
                          (lambda: get_evaluator("caption", num_samples=0), "num_samples=0 must be an integer >= 1"),
                          (lambda: get_evaluator("vqa", batch_size=0), "batch_size=0 must be an integer >= 1"),
                          (lambda: get_evaluator("mir", batch_size=-1), "batch_size=-1 must be an integer >= 0"),
                          (lambda: get_evaluator("multiple_choice", mode="vote"), "mode='vote'"),
                          (lambda: get_evaluator("mir", method="svd"), "method='svd'")]:
        with pytest.raises(ValueError) as e:
            call()
        assert message in str(e.value) and "\n" not in str(e.value)
    m = _stub_model("vicuna_v1")
    with pytest.raises(ValueError, match="format 'pope' holds pope records"):
        get_evaluator("vqa", data={"format": "pope", "jsonl": "x.jsonl"}).records(m)


# ----- one way to ask for evaluations --------------------------------------------------------------

def test_the_dict_form_builds_evaluators_by_key():
    """{KEY: {every, evaluator?, **options}}: the key names the evaluator unless "evaluator" does,
    every defaults to 0 (at the end only), the rest are the evaluator's options."""
    built = build_evals({"caption_4shot": {"evaluator": "caption", "every": 150, "shots": 4, "num_samples": 8},
                         "loss": {"every": 100}, "pope": {}})
    assert [(key, every, e.name) for key, every, e in built] == [
        ("caption_4shot", 150, "caption"), ("loss", 100, "loss"), ("pope", 0, "pope")]
    assert built[0][2].options["shots"] == 4 and built[0][2].options["num_samples"] == 8
    assert built[1][2].options == get_evaluator("loss").options  # nothing but "every" given
    for evals, message in [([{"name": "vqa", "every": 500}], "evals must be a dict keyed by name"),
                           ({"vqq": {}}, "evals.vqq: unknown evaluator 'vqq'; known: ["),
                           ({"vqa_4shot": {"shots": 4}}, "evals.vqa_4shot: unknown evaluator 'vqa_4shot'"),
                           ({"vqa": 3}, "evals.vqa=3 must be a dict of options"),
                           ({"vqa": {"every": -1}}, "evals.vqa.every=-1 must be an integer >= 0"),
                           ({"vqa": {"every": 2.5}}, "evals.vqa.every=2.5 must be an integer >= 0"),
                           ({"vqa": {"shot": 4}}, "evals.vqa: evaluator 'vqa': unknown option(s) ['shot']")]:
        with pytest.raises(ValueError) as e:
            build_evals(evals)
        assert message in str(e.value) and "\n" not in str(e.value)


def test_in_the_loop_loss_and_mir_take_the_runs_data_and_row_length():
    import ml_collections

    run = ml_collections.ConfigDict({"seq_len": 96, "seed": 7, "data": {"sources": [{"type": "synthetic"}]}})
    (_, _, loss), (_, _, mir), (_, _, mir_64), (_, _, loss_embedded) = build_evals(
        {"loss": {}, "mir": {"seq_len": 0}, "mir_64": {"evaluator": "mir", "seq_len": 64},
         "loss_embedded": {"evaluator": "loss", "data": "embedded", "seed": 1}}, run_config=run)
    assert loss.options["data"] is run.data and loss.options["seed"] == 7 and loss.options["seq_len"] == 96
    assert mir.options["seq_len"] == 96 and mir_64.options["seq_len"] == 64 and mir.options["seed"] == 0
    assert (loss_embedded.options["data"], loss_embedded.options["seed"]) == ("embedded", 1)
    assert get_evaluator("loss").options["seq_len"] == 0  # evaluate.py: the model's context, at most 512


def test_held_out_rows_are_named_by_the_key():
    """The loop's "eval" row as studies/collect.py and the plot read it: "mir", "mir_per_layer",
    ... for the key "mir", "loss" and "tokens" for "loss"; another key prefixes its fields."""
    from mir_jax.evals import EvalResult, MIREvaluation

    evaluation = MIREvaluation(
        per_layer=np.array([2.0, 8.0], np.float32), overall=1.0, method="exact", mode="streaming", num_samples=4,
        num_vision_tokens=16, num_text_tokens=40, lm_loss=2.5, perplexity=12.18, timings={},
        vision_norm_per_layer=np.array([3.0, 4.0]), text_norm_per_layer=np.array([5.0, 6.0]))
    result = EvalResult("mir", {"mir": 1.0, "lm_loss": 2.5}, details={"evaluation": evaluation, "data": {"seq_len": 384}})
    mir = get_evaluator("mir")
    want = {"mir": 1.0, "mir_per_layer": [2.0, 8.0], "mir_vision_norm_per_layer": [3.0, 4.0],
            "mir_text_norm_per_layer": [5.0, 6.0], "mir_samples": 4, "mir_vision_tokens": 16,
            "mir_text_tokens": 40, "mir_row_length": 384}
    assert mir.metrics(result, "mir") == want
    assert list(mir.metrics(result, "mir_long")) == [k.replace("mir", "mir_long", 1) for k in want]
    assert mir.report(result, "mir") == "mir=1.0000 (MIR over 4 samples, 16 vision / 40 text tokens, rows of 384)"
    loss = get_evaluator("loss")
    scores = EvalResult("loss", {"loss": 0.5, "perplexity": 1.6487, "tokens": 1200.0})
    assert loss.metrics(scores, "loss") == {"loss": 0.5, "tokens": 1200.0}
    assert loss.metrics(scores, "loss_b") == {"loss_b": 0.5, "loss_b_tokens": 1200.0}
    assert loss.report(scores, "loss") == "loss=0.5000"
    vqa = EvalResult("vqa", {"accuracy": 0.25, "num_samples": 8.0})
    assert get_evaluator("vqa").metrics(vqa, "vqa_4shot") == {"vqa_4shot/accuracy": 0.25}
    assert get_evaluator("vqa").report(vqa, "vqa_4shot") == "vqa_4shot/accuracy=0.250"


def test_sample_captions_are_the_caption_evaluators_greedy_captions():
    """The first images of the embedded benchmark captioned as the caption evaluator does (the
    captions the loop printed before it was an evaluator), each beside its first reference; no
    score; the fixed records once prepared."""
    from configs import common
    from mir_jax.models import LlavaConfig, LlavaModel

    model = LlavaModel(LlavaConfig.from_dict(common.tiny_model(common.ConnectorConfig(name="mlp2x_gelu"))),
                       rngs=nnx.Rngs(0))
    handle = EvalModel("untrained", model, TOK, ImageConfig(size=32), "plain")
    want = get_evaluator("caption", num_samples=2, batch_size=2, max_new_tokens=6).run(handle)
    samples = get_evaluator("sample_captions", num_samples=2, max_new_tokens=6)
    samples.prepare(handle)
    got = samples.run(handle)
    records = bench.embedded_task("caption", 2, image_size=32)
    assert got.scores == {} and samples.metrics(got, "sample_captions") == {}
    assert got.details["captions"] == [(r["captions"][0], p["text"]) for r, p in zip(records, want.predictions)]
    assert [p["text"] for p in got.predictions] == [p["text"] for p in want.predictions]
    assert samples.report(got, "sample_captions") == "\n".join(
        f"  target:    {r['captions'][0]}\n  generated: {p['text']}" for r, p in zip(records, want.predictions))
    assert [r["question_id"] for r in samples.fixed] == [r["question_id"] for r in records]


# ----- in the training loop ----------------------------------------------------------------------

@pytest.mark.slow
def test_training_loop_runs_evaluators_and_training_beats_no_training(tmp_path):
    """mm1_mix:runlocal (caption pre-training, plain template), 120 steps: the caption evaluator
    runs at steps 60 and 120, its scores land in metrics.jsonl and its answer files in
    WORKDIR/evals/; the trained model's CIDEr is far above the untrained model's (measured:
    ~0.6 at step 120 against 0.0)."""
    from configs import mm1_mix
    from mir_jax.models import LlavaConfig, LlavaModel
    from mir_jax.train.loop import train_and_evaluate
    from mir_jax.train.metrics import read_jsonl

    c = mm1_mix.get_config("runlocal")
    c.total_steps, c.log_every, c.batch_size = 120, 20, 8
    c.checkpoint.every, c.checkpoint.async_save = 0, False
    c.data.num_threads = 1
    # 48 new tokens, not the default longest reference (+4): the test is about the loop, and the
    # threshold below was measured at 48.
    c.evals = {"caption": {"every": 60, "num_samples": 32, "batch_size": 16, "max_new_tokens": 48}}
    result = train_and_evaluate(c, str(tmp_path))
    rows = [r for r in read_jsonl(str(tmp_path / "metrics.jsonl")) if r["split"] == "downstream"]
    assert [r["step"] for r in rows] == [60, 120]
    trained = rows[-1]["caption/cider"]
    assert result.downstream["caption/cider"] == trained
    answers = [json.loads(line) for line in open(tmp_path / "evals" / "step_120" / "caption_predictions.jsonl")]
    assert len(answers) == 32 and {"question_id", "prompt", "text", "answer_id", "model_id"} <= set(answers[0])
    scores = json.load(open(tmp_path / "evals" / "step_120" / "caption_scores.json"))
    assert scores["scores"]["cider"] == trained

    untrained = LlavaModel(LlavaConfig.from_dict(c.model.to_dict()), rngs=nnx.Rngs(0))
    handle = EvalModel("untrained", untrained, load_tokenizer(c.tokenizer), ImageConfig(size=32), "plain")
    baseline = get_evaluator("caption", num_samples=32, batch_size=16, max_new_tokens=48).run(handle).scores["cider"]
    print(f"caption CIDEr-D: trained {trained:.3f}, untrained {baseline:.3f}")
    assert trained > 0.3 and baseline < 0.05


def test_loop_evaluator_batch_must_split_over_the_mesh_before_training(tmp_path):
    from mir_jax.train.config_check import ConfigError
    from mir_jax.train.loop import Setup

    c = train_fixtures.tiny_train_config()  # mesh (-1, 1, 1): the 8 test devices, 8-way data parallel
    c.evals = {"vqa": {"every": 3, "batch_size": 12}}
    with pytest.raises(ConfigError, match="evals.vqa: batch_size=12 does not split over the 8"):
        Setup(c, str(tmp_path))
    assert not (tmp_path / "checkpoints").exists()
