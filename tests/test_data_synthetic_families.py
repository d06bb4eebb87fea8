"""The qa kind's instruction-data families (`questions=`) and noise (`wrong_answers=`), the
Individual Select study's candidates: checked against the scene itself, recounted here."""

from __future__ import annotations

import re

import pytest

from mir_jax.data.synthetic import NUMBERS, SyntheticSource

_COUNT = re.compile(r"How many (\w+) (\w+?)s are there\?")


def _true_count(scene, colour, kind):
    return sum(g["count"] for g in scene if g["colour"] == colour and g["kind"] == kind)


def _count_turns(source, n=40):
    for i in range(n):
        scene = source.scene(i)
        turns = source[i]["turns"]
        for (_, q), (_, a) in zip(turns[0::2], turns[1::2]):
            m = _COUNT.search(q)
            assert m, q  # only counting questions were asked
            yield _true_count(scene, m.group(1), m.group(2)), a


def test_counting_family_answers_are_the_counts():
    pairs = list(_count_turns(SyntheticSource("qa", questions=["count"], seed=3)))
    assert len(pairs) >= 40
    assert all(a == NUMBERS[c].capitalize() + "." for c, a in pairs)


def test_wrong_answers_are_wrong_and_of_the_same_form():
    pairs = list(_count_turns(SyntheticSource("qa", questions=["count"], seed=3, wrong_answers=1.0)))
    assert all(a != NUMBERS[c].capitalize() + "." for c, a in pairs)
    assert all(a in {n.capitalize() + "." for n in NUMBERS[1:]} for _, a in pairs)


def test_yes_no_family_and_the_default_is_unchanged():
    src = SyntheticSource("qa", questions=["exists"])
    answers = {a for i in range(30) for (_, a) in src[i]["turns"][1::2]}
    assert answers == {"Yes.", "No."}
    # No options: the samples the qa kind always drew (the benchmark and old runs rely on it).
    assert SyntheticSource("qa")[5]["turns"] == SyntheticSource("qa", questions=None, wrong_answers=0.0)[5]["turns"]
    plain = SyntheticSource("qa")[5]["turns"]
    assert SyntheticSource("qa", questions=["count", "colour", "shape", "describe", "position", "exists",
                                            "choice"])[5]["turns"] == plain


@pytest.mark.parametrize("kwargs, message", [
    ({"questions": ["counting"]}, "use some of"),
    ({"questions": []}, "use some of"),
    ({"wrong_answers": 1.5}, r"must be in \[0, 1\]"),
])
def test_bad_options_are_one_line(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SyntheticSource("qa", **kwargs)


def test_lookup_drill_answers_the_letter_of_the_named_option():
    src = SyntheticSource("text_qa", questions=["lookup"], seed=5)
    letters = []
    for i in range(30):
        turns = src[i]["turns"]
        for (_, q), (_, a) in zip(turns[0::2], turns[1::2]):
            word = re.search(r"Which option says (\w+)\?", q).group(1)
            options = dict(re.findall(r"^([A-D])\. (\w+)$", q, flags=re.M))
            assert len(options) == 4 and options[a] == word, q
            letters.append(a)
    # The right option's place is shuffled: every letter is the answer about a quarter of the time.
    assert all(0.15 < letters.count(x) / len(letters) < 0.35 for x in "ABCD"), letters
