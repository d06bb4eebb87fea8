"""The embedded benchmark: held-out captioning, VQA, POPE and multiple choice on the
synthetic shapes world, the default data of every downstream evaluator.

Scenes come from the corpus's ``"bench"`` split (`mir_jax.data.synthetic`), never seen in
training; question `i` of a task is a pure function of (task, seed, i), and the few-shot
support set is the same generator at indices ``SUPPORT_OFFSET + j``.

Records (the shapes of `mir_jax.evals.datasets`, images as uint8 arrays):
  caption          {"question_id", "image", "captions": [1 or 2 references]}
  vqa              {"question_id", "image", "question", "answers": 10 human-style answers,
                   "metric": "normalized", "kind": count|colour|shape|position}
  pope             {"question_id", "image", "question", "label": yes|no,
                   "category": random|adversarial}
  multiple_choice  {"question_id", "image", "question", "options": 4, "answer": index}
How each task is built, and why VQA is scored normalized: docs/evaluation.md.
"""

from __future__ import annotations

import numpy as np

from mir_jax.data import synthetic as syn

TASKS = ("caption", "vqa", "pope", "multiple_choice")
SUPPORT_OFFSET = 1_000_000
_TASK_CODES = {"caption": 11, "vqa": 12, "pope": 13, "multiple_choice": 14}


def _scene(task: str, seed: int, index: int, image_size: int):
    rng = np.random.default_rng([seed, _TASK_CODES[task], syn.SPLIT_CODES["bench"], index])
    scene = syn.random_scene(rng)
    return scene, syn.render(scene, image_size, rng), rng


def _caption(i, seed, size):
    scene, image, _ = _scene("caption", seed, i, size)
    refs = [syn.caption(scene)]
    if len(scene) == 2:
        refs.append(syn.caption(scene[::-1]))
    return {"question_id": f"caption/{i}", "image": image, "captions": refs, "scene": scene}


def _vqa(i, seed, size):
    scene, image, rng = _scene("vqa", seed, i, size)
    g = scene[int(rng.integers(len(scene)))]
    kinds = ["count", "colour", "shape"] + (["position"] if g["side"] else [])
    kind = kinds[int(rng.integers(len(kinds)))]
    plural = g["kind"] + "s"
    if kind == "count":
        q, a = f"How many {g['colour']} {plural} are there?", syn.NUMBERS[g["count"]]
    elif kind == "colour":
        q = f"What colour is the {g['kind']}?" if g["count"] == 1 else f"What colour are the {plural}?"
        a = g["colour"]
    elif kind == "shape":
        if g["count"] == 1:
            q, a = f"What shape is the {g['colour']} object?", g["kind"]
        else:
            q, a = f"What shape are the {g['colour']} objects?", plural
    else:
        q, a = f"Where are the {g['colour']} {plural}?", g["side"]
    answers = [a] * 5 + [f"on the {a}"] * 5 if kind == "position" else [a] * 10
    return {"question_id": f"vqa/{i}", "image": image, "question": q, "answers": answers,
            "metric": "normalized", "kind": kind, "scene": scene}


def _pope(i, seed, size):
    scene, image, rng = _scene("pope", seed, i, size)
    category = "random" if (i // 2) % 2 == 0 else "adversarial"
    if i % 2 == 0:
        g = scene[int(rng.integers(len(scene)))]
        colour, kind, label = g["colour"], g["kind"], "yes"
    else:
        colour, kind = syn.absent_object(scene, rng, same_kind=category == "adversarial")
        label = "no"
    return {"question_id": f"pope/{i}", "image": image, "question": syn.exists_question(colour, kind),
            "label": label, "category": category, "scene": scene}


def _multiple_choice(i, seed, size):
    scene, image, rng = _scene("multiple_choice", seed, i, size)
    g = scene[int(rng.integers(len(scene)))]
    question, options, answer = syn.choice_question(g, rng)
    return {"question_id": f"multiple_choice/{i}", "image": image, "question": question,
            "options": options, "answer": answer, "hint": None, "scene": scene}


_BUILDERS = {"caption": _caption, "vqa": _vqa, "pope": _pope, "multiple_choice": _multiple_choice}


SCENE_MODES = ("image", "text", "blank")


def _show_scene(record: dict, mode: str) -> dict:
    """The record with its scene shown as `mode` says (see `embedded_task`)."""
    if mode == "text":
        # Told in words as `text_qa` tells it, before the question; no image.
        record["question"] = syn.scene_sentence(record["scene"]) + "\n" + record["question"]
        record["image"] = None
    elif mode == "blank":
        record["image"] = np.full_like(record["image"], 240)
    return record


def embedded_task(task: str, num_samples: int, *, image_size: int, seed: int = 0,
                  support: bool = False, scene: str = "image") -> list[dict]:
    """The first `num_samples` records of an embedded task (or of its few-shot support set).

    `scene`: "image" (the benchmark), "text" (the scene told in words, no image) or "blank"
    (a uniform grey image: the control that a score needs the image)."""
    if task not in _BUILDERS:
        raise ValueError(f"no embedded {task!r} benchmark; known: {list(TASKS)}")
    if scene not in SCENE_MODES:
        raise ValueError(f"scene={scene!r}: use one of {list(SCENE_MODES)}")
    offset = SUPPORT_OFFSET if support else 0
    records = [_show_scene(_BUILDERS[task](offset + i, seed, image_size), scene)
               for i in range(int(num_samples))]
    if support:
        for r in records:
            r["question_id"] = "support/" + r["question_id"]
    return records
