"""Stage 0 of the miniature: what LLaVA starts from, pre-trained here on the embedded corpus.

Real LLaVA starts stage 1 from a pre-trained CLIP and LLM (`mir_jax.weights.hf.build_stage1`);
the miniature has none, so this recipe trains both, everything trainable, in four phases:

* `:runlocal,llm`: the LLM on `text_qa` conversations alone (`mir_jax.data.synthetic`: the
  scene told in words, then 1-6 questions), so that it learns to read a told scene;
* `:runlocal,vision` (`--config.init_from=` the llm phase's workdir): the vision tower by
  captioning (CapPa, Tschannen et al. 2023: no batch of negatives, the same loss and train step
  as every other stage), with `text_qa` and extra existence / choice questions kept on;
* `:runlocal,choice` then `:runlocal,settle` (each from the phase before): the option's letter,
  drilled (lettered choice is 0.75 of the data) and then kept while the other families recover
  (0.5), at a lower learning rate.

Its result, exported with `python -m mir_jax.weights.export`, is shipped as
`configs/common.py:MINIATURE_BASE`, which every other `:runlocal` recipe starts from (stage 1:
its vision tower and LLM under a fresh connector). The commands, the rationale and the
measurements: docs/miniature_world.md. Only `runlocal` exists.
"""

from configs import common
from mir_jax.models import ConnectorConfig

# llava15_sft.py:runlocal's system prompt, so text_qa is laid out as the SFT data will be.
SYSTEM = "A chat between a user and an assistant."
PHASES = ("llm", "vision", "choice", "settle")
# The lettered-choice phases: their share of lettered choice, steps, held-out scores every.
LETTER_PHASES = {"choice": (0.75, 600, 150), "settle": (0.5, 1500, 250)}


def get_config(arg=None):
    opts = common.parse_arg(arg, known=("runlocal", *PHASES))
    if "runlocal" not in opts:
        raise ValueError("configs/stage0.py is runlocal-only (configs/stage0.py:runlocal): at full "
                         "size stage 0 is a pre-trained CLIP and LLM, joined by mir_jax.weights.hf.build_stage1")
    if len(opts & set(PHASES)) != 1:
        raise ValueError("configs/stage0.py:runlocal takes one phase, in this order: runlocal,llm (the "
                         "LLM on told scenes), then runlocal,vision, runlocal,choice and runlocal,settle, "
                         "each with --config.init_from=the phase before's workdir")
    (phase,) = opts & set(PHASES)
    c = common.base_config()
    # Up to 6 questions per told scene: more answers per token read (docs/miniature_world.md).
    text_qa = {"type": "synthetic", "kind": "text_qa", "template": "vicuna_v1", "max_turns": 6,
               # Overlong conversations lose their last turns rather than the whole sample.
               "overlong": "truncate"}
    if "llm" in opts:
        # Reading a told scene is learned fastest on told scenes alone (docs/miniature_world.md).
        sources = [{**text_qa, "weight": 1.0}]
    else:
        sources = [
            {"type": "synthetic", "kind": "caption", "template": "plain", "weight": 0.2},
            {"type": "synthetic", "kind": "text", "weight": 0.05},
            {**text_qa, "weight": 0.4},
            # Existence and lettered choice are the families learned last: a second stream of
            # them, on other scenes (its own seed).
            {**text_qa, "weight": 0.35, "questions": ["exists", "choice"], "seed": 1},
        ]
    common.apply_runlocal(c, ConnectorConfig(name="mlp2x_gelu"), sources=sources)
    # The llm phase starts from nothing; the vision phase from the llm phase's workdir.
    c.init_from = "" if "llm" in opts else common.required()
    c.init_parts = "all"
    c.data.system = SYSTEM
    c.trainable.connector = True
    c.trainable.vision = "all"
    c.trainable.llm = "all"
    c.seq_len = 256
    # Existence is learned late (told POPE 0.60 / 0.74 / 0.90 at steps 500 / 1,000 / 1,500) and
    # only while the learning rate is still high: scheduled for 1,200 steps, the same run never
    # learned it (docs/miniature_world.md, "How the base was found").
    c.total_steps = 1500 if "llm" in opts else 600
    c.optimizer.lr = 3e-3
    c.optimizer.warmup_steps = 50
    c.checkpoint.every = 250
    common.held_out_every(c, 500)
    del c.evals["sample_captions"]
    # The base LLM told each scene in words (`scene="text"`): what stage 0 must teach.
    c.evals.update({f"{task}_text": {"evaluator": task, "every": 250, "num_samples": 96, "scene": "text"}
                    for task in ("vqa", "pope", "multiple_choice")})
    if phase in LETTER_PHASES:
        _letter_phase(c, text_qa, *LETTER_PHASES[phase])
    return c


def _letter_phase(c, text_qa, choice_share, steps, every):
    """Turns the vision phase's config into a lettered-choice phase. The letter first moved when it
    was most of the data, and kept rising at half of it while the other families came back
    (docs/miniature_world.md, "How the base was found")."""
    caption_share = 0.05
    # Every told question asked at most once per conversation, so no answer is read off a turn before.
    text_qa = {**text_qa, "distinct_questions": True}
    c.data.sources = [
        {"type": "synthetic", "kind": "caption", "template": "plain", "weight": caption_share, "seed": 12},
        {**text_qa, "weight": 1 - caption_share - choice_share, "seed": 13},
        {**text_qa, "weight": choice_share, "questions": ["choice"], "seed": 14},
    ]
    c.total_steps = steps
    c.optimizer.lr = 2e-3
    c.optimizer.warmup_steps = 20
    c.checkpoint.every = 150
    for task in ("vqa", "pope", "multiple_choice"):
        c.evals[f"{task}_text"]["every"] = every
