"""Individual Select ("Rethinking Overlooked Aspects in VLMs"): which candidate SFT datasets
to add to a base set, chosen one at a time by their individual gain, against simply taking
all of them.

    python study.py --study=configs/studies/individual_select.py:runlocal --workdir=/tmp/individual_select

The procedure, as variants of the SFT stage (one stage 1 shared by all):
1. `base`: SFT on the base set alone; `plus_C` for each candidate C: base + C, same budget;
   C's individual gain = score(plus_C) - score(base);
2. greedy: start from the best candidate with a positive gain, try adding the next best, keep
   it only if the score improves (`select_...` variants; each is decided by the scores before
   it, so they run in rounds: the study's `derive`);
3. `all`: base + every candidate. study.json's "summary" holds the gains, the selected set
   and its score against all data's.

Miniature candidates: families of synthetic instruction data (`mir_jax.data.synthetic`'s qa
kind restricted to some question families, `questions=`): helpful ones (counting, attributes,
yes/no, multiple choice), a redundant one (more of the base family, another seed), and a noisy
one (every family, each answer replaced by a wrong one, `wrong_answers=1.0`). Full size: give
the base and candidate JSON files (LLaVA format) in CANDIDATE_FILES with --set paths.
"""

from configs.studies import common

BASE = {"questions": ["describe", "position"]}
CANDIDATES = {
    "counting": {"questions": ["count"]},
    "attributes": {"questions": ["colour", "shape"]},
    "yes_no": {"questions": ["exists"]},
    "choice": {"questions": ["choice"]},
    "redundant": {"questions": ["describe", "position"], "seed": 7},
    "noisy": {"wrong_answers": 1.0},
}
# Full size: the base set and each candidate as LLaVA-format files (relative to the image root).
CANDIDATE_FILES = {"base": "sft/base.json", **{c: f"sft/{c}.json" for c in CANDIDATES}}


def _source(runlocal: bool, name: str) -> dict:
    if not runlocal:
        return {"type": "llava", "path": CANDIDATE_FILES[name], "image_folder": "data", "name": name}
    fields = BASE if name == "base" else CANDIDATES[name]
    return {"type": "synthetic", "kind": "qa", "template": "vicuna_v1", "name": f"qa_{name}", **fields}


def _variant(runlocal: bool, name: str, members: list[str]) -> dict:
    sources = [_source(runlocal, "base")] + [_source(runlocal, c) for c in members]
    return {"name": name, "overrides": {"sft": {"data.sources": sources}}}


def _scores(results: dict) -> dict[str, float | None]:
    return {name: (entry or {}).get("score") for name, entry in results.items()}


def _greedy(runlocal: bool, results: dict):
    """(the greedy pass so far: accepted candidates and their score, the next variant to run
    or None when the pass is over); None while the base and single-candidate runs lack scores."""
    scores = _scores(results)
    base = scores.get("base")
    singles = {c: scores.get(f"plus_{c}") for c in CANDIDATES}
    if base is None or any(s is None for s in singles.values()):
        return None
    gains = {c: s - base for c, s in singles.items()}
    order = [c for c in sorted(CANDIDATES, key=lambda c: -gains[c]) if gains[c] > 0]
    if not order:
        return gains, [], base, None
    accepted, best = [order[0]], singles[order[0]]
    for c in order[1:]:
        trial = accepted + [c]
        name = "select_" + "+".join(trial)
        if scores.get(name) is None:
            return gains, accepted, best, _variant(runlocal, name, trial)
        if scores[name] > best:
            accepted, best = trial, scores[name]
    return gains, accepted, best, None


def get_study(arg=None):
    runlocal = common.parse_arg(arg)

    def derive(results):
        state = _greedy(runlocal, results)
        return [state[3]] if state and state[3] else []

    def summarize(results):
        state = _greedy(runlocal, results)
        if state is None or state[3] is not None:
            return {"complete": False}
        gains, accepted, best, _ = state
        return {"complete": True, "base_score": _scores(results)["base"], "individual_gain": gains,
                "selected": accepted, "selected_score": best, "all_score": _scores(results).get("all")}

    variants = [_variant(runlocal, "base", []),
                *[_variant(runlocal, f"plus_{c}", [c]) for c in CANDIDATES],
                _variant(runlocal, "all", list(CANDIDATES))]
    stage1 = common.stage1(runlocal)
    stage1["shared"] = True
    return {
        "name": "individual_select",
        "description": "Candidate SFT datasets by individual gain over the base set, a greedy selection, "
                       "and all data, on one shared stage 1.",
        "stages": [stage1, common.sft(runlocal)],
        "variants": variants,
        "mir_stage": None,
        "score_stage": "sft",
        "score_metrics": common.SFT_SCORE,
        "derive": derive,
        "summarize": summarize,
    }
