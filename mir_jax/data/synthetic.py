"""The embedded corpus: procedurally generated shapes, deterministic from a seed.

Sample ``i`` is a pure function of ``(seed, kind, split, i)``, so any sample can be regenerated
by index (random access, exact resumption). Splits: ``"train"``, ``"eval"`` (held-out loss/MIR)
and ``"bench"`` (the held-out benchmark, ``mir_jax.evals.benchmark``), from disjoint seeds.

A scene has one or two groups of 1-3 identical shapes (kind, colour, size), with two groups
the first on the left and the second on the right, one shape per cell of a 4x4 grid. Captions are
regular: "one small blue square on the left and three large green triangles on the right."

Kinds (``SyntheticSource(kind=...)``):
* ``caption`` -- one image and its caption;
* ``interleaved`` -- 2-3 images with connecting text;
* ``text`` -- text-only passages about shapes and colours;
* ``qa`` -- conversations: counts, colours, shapes, positions, a description, yes/no existence
  and lettered multiple choice (LLaVA's layout);
* ``text_qa`` -- the ``qa`` conversations without an image, the scene told in words first
  ("In the picture: ...\n"); it lets stage 0 (``configs/stage0.py``) teach answering before
  the model learns to read images.
"""

from __future__ import annotations

import functools

import numpy as np

from .templates import CAPTION_PROMPT

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 160, 60),
    "blue": (40, 80, 220),
    "yellow": (230, 200, 30),
    "purple": (140, 60, 180),
    "orange": (240, 130, 30),
}
KINDS = ("circle", "square", "triangle")
SIZES = ("small", "large")
NUMBERS = ("zero", "one", "two", "three")
GRID = 4
KIND_CODES = {"caption": 1, "interleaved": 2, "text": 3, "qa": 4, "text_qa": 5}
SPLIT_CODES = {"train": 0, "eval": 1, "bench": 2}
_NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Fay")
_SIDES = {"circle": "no corners", "square": "four equal sides", "triangle": "three sides"}
_MIXES = (("red", "blue", "purple"), ("red", "yellow", "orange"), ("blue", "yellow", "green"))


def _plural(kind: str, count: int) -> str:
    return kind + ("s" if count != 1 else "")


def random_scene(rng: np.random.Generator) -> list[dict]:
    """A list of groups {kind, colour, size, count, side, cells}; side: None, "left", "right"."""
    n_groups = int(rng.integers(1, 3))
    colours = rng.choice(list(COLOURS), size=n_groups, replace=False)
    kinds = rng.choice(KINDS, size=n_groups, replace=False)
    groups = []
    for g in range(n_groups):
        count = int(rng.integers(1, 4))
        if n_groups == 1:
            cols, side = range(GRID), None
        else:
            cols = range(0, GRID // 2) if g == 0 else range(GRID // 2, GRID)
            side = "left" if g == 0 else "right"
        cells = [(r, c) for r in range(GRID) for c in cols]
        pick = rng.choice(len(cells), size=count, replace=False)
        groups.append({
            "kind": str(kinds[g]), "colour": str(colours[g]), "size": str(rng.choice(SIZES)),
            "count": count, "side": side, "cells": [cells[int(k)] for k in pick],
        })
    return groups


def group_phrase(g: dict) -> str:
    phrase = f"{NUMBERS[g['count']]} {g['size']} {g['colour']} {_plural(g['kind'], g['count'])}"
    return phrase + (f" on the {g['side']}" if g["side"] else "")


def caption(scene: list[dict]) -> str:
    """E.g. "two large red circles on the left and one small blue square on the right." """
    return " and ".join(group_phrase(g) for g in scene) + "."


@functools.lru_cache(maxsize=8)
def _pixel_centres(size: int) -> tuple[np.ndarray, np.ndarray]:
    """(y, x) float32 [size, size] coordinates of the pixel centres (read-only, shared)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) + 0.5
    yy.flags.writeable = xx.flags.writeable = False
    return yy, xx


def render(scene: list[dict], size: int, rng: np.random.Generator) -> np.ndarray:
    """uint8 [size, size, 3]: a light background with the scene's shapes."""
    bg = int(rng.integers(225, 256))
    img = np.full((size, size, 3), bg, np.uint8)
    cell = size / GRID
    yy, xx = _pixel_centres(size)
    for g in scene:
        r = cell * (0.42 if g["size"] == "large" else 0.24)
        colour = np.array(COLOURS[g["colour"]], np.uint8)
        for row, col in g["cells"]:
            cy = (row + 0.5) * cell + rng.uniform(-0.05, 0.05) * cell
            cx = (col + 0.5) * cell + rng.uniform(-0.05, 0.05) * cell
            dy, dx = yy - cy, xx - cx
            if g["kind"] == "circle":
                mask = dy * dy + dx * dx <= r * r
            elif g["kind"] == "square":
                mask = (np.abs(dx) <= 0.85 * r) & (np.abs(dy) <= 0.85 * r)
            else:  # upward triangle: apex at cy - r, base at cy + 0.8 r
                t = (dy + r) / (1.8 * r)
                mask = (t >= 0) & (t <= 1) & (np.abs(dx) <= t * r)
            img[mask] = colour
    return img


CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
LETTERS = "ABCD"


def absent_object(scene: list[dict], rng: np.random.Generator, same_kind: bool = False) -> tuple[str, str]:
    """A (colour, kind) pair no group of the scene has; with ``same_kind`` a kind that is in the
    scene in another colour (POPE's "adversarial" negatives)."""
    present = {(g["colour"], g["kind"]) for g in scene}
    kinds = [g["kind"] for g in scene] if same_kind else list(KINDS)
    pairs = [(c, k) for k in kinds for c in COLOURS if (c, k) not in present]
    c, k = pairs[int(rng.integers(len(pairs)))]
    return c, k


def exists_question(colour: str, kind: str) -> str:
    return f"Is there a {colour} {kind} in the image?"


def choice_question(g: dict, rng: np.random.Generator) -> tuple[str, list[str], int]:
    """(question, 4 options, index of the right one) about group ``g``'s colour, count or shape."""
    what = ("colour", "count", "shape")[int(rng.integers(3))]
    plural = _plural(g["kind"], 2)
    if what == "colour":
        question, right, pool = f"What colour are the {plural}?", g["colour"], list(COLOURS)
    elif what == "count":
        question, right, pool = f"How many {g['colour']} {plural} are there?", NUMBERS[g["count"]], list(NUMBERS)
    else:
        question, right, pool = f"What shape are the {g['colour']} objects?", g["kind"], [*KINDS, "star"]
    wrong = [x for x in pool if x != right]
    options = [right] + [wrong[int(k)] for k in rng.choice(len(wrong), size=3, replace=False)]
    order = rng.permutation(4)
    options = [options[int(k)] for k in order]
    return question, options, int(np.argmax(order == 0))


def choice_prompt(question: str, options: list[str]) -> str:
    """LLaVA's multiple-choice layout: the question, lettered options, the instruction."""
    # chr, not LETTERS: benchmark files have a fifth option (ScienceQA, MMBench's E).
    lines = [question] + [f"{chr(ord('A') + i)}. {o}" for i, o in enumerate(options)]
    return "\n".join(lines + [CHOICE_INSTRUCTION])


QUESTION_FAMILIES = ("count", "colour", "shape", "describe", "position", "exists", "choice", "lookup")
# Asked only where a source names it: "lookup" is a drill for the letter of lettered choice (the
# option that says a given word), not a benchmark family.
_DRILLS = ("lookup",)


def _question(scene: list[dict], rng: np.random.Generator, families=None,
              wrong_answers: float = 0.0) -> tuple[str, str]:
    """One (question, answer) about ``scene``.

    ``families`` limits the question families (``"describe"`` when none applies);
    ``wrong_answers`` is the chance the answer is replaced by a wrong one (noisy data)."""
    q, a, family, g = _question_and_family(scene, rng, families)
    if wrong_answers and rng.random() < wrong_answers:
        a = _wrong_answer(family, a, g, rng)
    return q, a


def _wrong_answer(family: str, right: str, g: dict, rng: np.random.Generator) -> str:
    """An answer of the same form as ``right`` that is not right."""
    if family == "count":
        pool = [n.capitalize() + "." for n in NUMBERS[1:]]
    elif family == "colour":
        pool = [c.capitalize() + "." for c in COLOURS]
    elif family == "shape":
        pool = [f"A {k}." for k in KINDS] if g["count"] == 1 else [_plural(k, 2).capitalize() + "." for k in KINDS]
    elif family == "position":
        pool = ["On the left.", "On the right."]
    elif family == "exists":
        pool = ["Yes.", "No."]
    elif family in ("choice", "lookup"):
        pool = list(LETTERS[:4])
    else:
        pool = [caption(random_scene(rng)).capitalize() for _ in range(4)]
    pool = [x for x in pool if x != right]
    return pool[int(rng.integers(len(pool)))]


def _question_and_family(scene: list[dict], rng: np.random.Generator, families=None):
    g = scene[int(rng.integers(len(scene)))]
    kinds = ["count", "colour", "shape", "describe"] + (["position"] if g["side"] else []) + ["exists", "choice"]
    if families is not None:
        kinds = [k for k in kinds + list(_DRILLS) if k in families] or ["describe"]
    q = kinds[int(rng.integers(len(kinds)))]
    question, answer = _ask(q, g, scene, rng)
    return question, answer, q, g


def _ask(q: str, g: dict, scene: list[dict], rng: np.random.Generator) -> tuple[str, str]:
    plural = _plural(g["kind"], 2)
    if q == "count":
        return f"How many {g['colour']} {plural} are there?", NUMBERS[g["count"]].capitalize() + "."
    if q == "colour":
        verb, noun = ("is the", g["kind"]) if g["count"] == 1 else ("are the", plural)
        return f"What colour {verb} {noun}?", g["colour"].capitalize() + "."
    if q == "shape":
        if g["count"] == 1:
            return f"What shape is the {g['colour']} object?", f"A {g['kind']}."
        return f"What shape are the {g['colour']} objects?", plural.capitalize() + "."
    if q == "position":
        return f"Where are the {g['colour']} {plural}?", f"On the {g['side']}."
    if q == "exists":
        if rng.integers(2):
            return exists_question(g["colour"], g["kind"]), "Yes."
        return exists_question(*absent_object(scene, rng, same_kind=bool(rng.integers(2)))), "No."
    if q == "choice":
        question, options, answer = choice_question(g, rng)
        return choice_prompt(question, options), LETTERS[answer]
    if q == "lookup":
        _, options, answer = choice_question(g, rng)
        return choice_prompt(f"Which option says {options[answer]}?", options), LETTERS[answer]
    return CAPTION_PROMPT, caption(scene).capitalize()


SCENE_INTRO = "In the picture: "


def scene_sentence(scene: list[dict]) -> str:
    """The scene in the caption's words, as text_qa tells it: "In the picture: two large red
    circles on the left and one small blue square on the right." """
    return SCENE_INTRO + caption(scene)


# Redraws allowed per turn before a distinct_questions conversation accepts a repeat (a scene
# of one group may have fewer distinct questions than turns).
_REDRAWS = 8


def conversation_turns(scene: list[dict], rng: np.random.Generator, opening: str, *, families=None,
                       wrong_answers: float = 0.0, max_turns: int = 2,
                       distinct_questions: bool = False) -> list[tuple[str, str]]:
    """1 to ``max_turns`` question/answer turns about ``scene``, the first user turn opened by
    ``opening`` ("<image>\n" for qa, the scene sentence and a newline for text_qa).

    Questions are drawn independently, so a conversation may ask one twice, and a repeat is
    answered by copying the earlier answer rather than by reading the scene;
    ``distinct_questions`` redraws a repeat (up to _REDRAWS times)."""
    turns, asked = [], set()
    for k in range(int(rng.integers(1, max_turns + 1))):
        q, a = _question(scene, rng, families, wrong_answers)
        for _ in range(_REDRAWS if distinct_questions else 0):
            if q not in asked:
                break
            q, a = _question(scene, rng, families, wrong_answers)
        asked.add(q)
        turns += [("user", (opening if k == 0 else "") + q), ("assistant", a)]
    return turns


def _passage(rng: np.random.Generator) -> str:
    sentences = []
    for _ in range(int(rng.integers(3, 7))):
        c1, c2 = rng.choice(list(COLOURS), size=2, replace=False)
        k1, k2 = rng.choice(KINDS, size=2)
        n = int(rng.integers(1, 4))
        form = int(rng.integers(5))
        if form == 0:
            sentences.append(f"A {k1} is a shape with {_SIDES[str(k1)]}.")
        elif form == 1:
            sentences.append(f"There were {NUMBERS[n]} {c1} {_plural(str(k1), n)} on the table.")
        elif form == 2:
            sentences.append(f"The {c1} {k1} was next to the {c2} {k2}.")
        elif form == 3:
            sentences.append(f"{_NAMES[int(rng.integers(len(_NAMES)))]} likes {c1} {_plural(str(k1), 2)}.")
        else:
            a, b, c = _MIXES[int(rng.integers(len(_MIXES)))]
            sentences.append(f"Mixing {a} and {b} makes {c}.")
    return " ".join(sentences)


class SyntheticSource:
    """Random-access source of embedded-corpus records (see module docstring).

    Args:
      kind: "caption", "interleaved", "text", "qa" or "text_qa".
      num_samples: the source's (virtual) length.
      image_size: images are drawn at the encoder's resolution.
      seed, split: with the kind and index, determine every sample.
      questions: qa/text_qa only: some of QUESTION_FAMILIES to ask; None = all.
      wrong_answers: qa/text_qa only: the chance each answer is replaced by a wrong one of the
        same form (noisy instruction data).
      max_turns: qa/text_qa only: conversations have 1 to max_turns question/answer turns
        (more turns: more answers per scene read).
      distinct_questions: qa/text_qa only: no question asked twice in one conversation where
        the scene allows (`conversation_turns`); off keeps the independent draws.

    Raises:
      ValueError: an unknown kind, split or question family, or wrong_answers outside [0, 1].
    """

    def __init__(self, kind: str = "caption", *, num_samples: int = 100_000, image_size: int = 64,
                 seed: int = 0, split: str = "train", questions=None, wrong_answers: float = 0.0,
                 max_turns: int = 2, distinct_questions: bool = False):
        if kind not in KIND_CODES:
            raise ValueError(f"synthetic kind {kind!r} not in {tuple(KIND_CODES)}")
        if split not in SPLIT_CODES:
            raise ValueError(f"split {split!r} not in {tuple(SPLIT_CODES)}")
        if questions is not None:
            unknown = sorted(set(questions) - set(QUESTION_FAMILIES))
            if unknown or not questions:
                raise ValueError(f"synthetic questions {list(questions)!r}: use some of {list(QUESTION_FAMILIES)}")
            questions = tuple(questions)
        if not 0.0 <= float(wrong_answers) <= 1.0:
            raise ValueError(f"synthetic wrong_answers={wrong_answers!r} must be in [0, 1]")
        if int(max_turns) < 1:
            raise ValueError(f"synthetic max_turns={max_turns!r} must be >= 1")
        self.kind, self.num_samples, self.image_size = kind, int(num_samples), int(image_size)
        self.seed, self.split = int(seed), split
        self.questions, self.wrong_answers, self.max_turns = questions, float(wrong_answers), int(max_turns)
        self.distinct_questions = bool(distinct_questions)
        self.name = f"synthetic_{kind}"

    def __len__(self) -> int:
        return self.num_samples

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, KIND_CODES[self.kind], SPLIT_CODES[self.split], index])

    def _qa_options(self) -> dict:
        return {"families": self.questions, "wrong_answers": self.wrong_answers, "max_turns": self.max_turns,
                "distinct_questions": self.distinct_questions}

    def scene(self, index: int) -> list[dict]:
        """The scene of a caption, qa or text_qa sample (for tests and demos)."""
        return random_scene(self._rng(index))

    def __getitem__(self, index: int) -> dict:
        index = int(index) % self.num_samples
        rng = self._rng(index)
        rid = f"{self.name}/{self.split}/{index}"
        base = {"id": rid, "file": "<synthetic>"}
        if self.kind == "text":
            return {**base, "kind": "text", "text": _passage(rng)}
        if self.kind == "text_qa":
            scene = random_scene(rng)
            turns = conversation_turns(scene, rng, scene_sentence(scene) + "\n", **self._qa_options())
            return {**base, "kind": "conversation", "images": [], "turns": turns}
        if self.kind in ("caption", "qa"):
            scene = random_scene(rng)
            image = render(scene, self.image_size, rng)
            if self.kind == "caption":
                return {**base, "kind": "caption", "images": [image], "caption": caption(scene)}
            turns = conversation_turns(scene, rng, "<image>\n", **self._qa_options())
            return {**base, "kind": "conversation", "images": [image], "turns": turns}
        n = int(rng.integers(2, 4))
        images, segments = [], [{"text": "Here are some pictures of shapes."}]
        links = ("In the first one we see ", "Next, there are ", "Finally, there are ")
        for k in range(n):
            scene = random_scene(rng)
            images.append(render(scene, self.image_size, rng))
            segments += [{"image": k}, {"text": " " + links[k] + caption(scene)}]
        return {**base, "kind": "interleaved", "images": images, "segments": segments}
