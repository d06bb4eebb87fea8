"""Stage 0 of the miniature: what LLaVA starts from, pre-trained here on the embedded corpus.

Real LLaVA starts stage 1 from a pre-trained CLIP and LLM (`mir_jax.weights.hf.build_stage1`);
the tiny `:runlocal` model has none, so this recipe trains both, with everything trainable:

* the vision tower by captioning (CapPa, Tschannen et al. 2023), which needs no batch of
  negatives and uses the same loss and train step as every other stage;
* the LLM on `text` passages and `text_qa` conversations (`mir_jax.data.synthetic`: the scene
  told in words, then questions), so SFT only has to teach it to read the scene from the image.

The connector is `llava15_pretrain.py:runlocal`'s, whose stage 1 takes this workdir's vision
tower and LLM (`init_parts="vision,llm"`) with a fresh connector. The chain, the rationale and
the measurements: docs/miniature_world.md. Only `runlocal` exists.
"""

from configs import common
from mir_jax.models import ConnectorConfig

# llava15_sft.py:runlocal's system prompt, so text_qa is laid out as the SFT data will be.
SYSTEM = "A chat between a user and an assistant."


def get_config(arg=None):
    opts = common.parse_arg(arg)
    if "runlocal" not in opts:
        raise ValueError("configs/stage0.py is runlocal-only (configs/stage0.py:runlocal): at full "
                         "size stage 0 is a pre-trained CLIP and LLM, joined by mir_jax.weights.hf.build_stage1")
    c = common.base_config()
    common.apply_runlocal(c, ConnectorConfig(name="mlp2x_gelu"), sources=[
        {"type": "synthetic", "kind": "caption", "template": "plain", "weight": 0.7},
        {"type": "synthetic", "kind": "text", "weight": 0.05},
        # Overlong conversations lose their last turn rather than the whole sample.
        {"type": "synthetic", "kind": "text_qa", "template": "vicuna_v1", "weight": 0.25,
         "overlong": "truncate"},
    ])
    c.data.system = SYSTEM
    c.trainable.connector = True
    c.trainable.vision = "all"
    c.trainable.llm = "all"
    # Short rows keep CPU attention cheap (docs/miniature_world.md).
    c.seq_len = 320
    c.batch_size = 8
    # A shorter stage 0 leaves post-SFT scores that do not depend on stage 1
    # (docs/miniature_world.md).
    c.total_steps = 1500
    c.optimizer.lr = 3e-3
    c.checkpoint.every = 500
    common.held_out_every(c, 500)
    # The in-loop prompts would be vicuna_v1 (text_qa's), not the plain captions stage 0 trains:
    # caption it with `evaluate.py --checkpoint=S0 --evals=caption --prompt_template=plain`.
    del c.evals["sample_captions"]
    return c
