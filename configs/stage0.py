"""Stage 0 of the miniature: what LLaVA starts from, pre-trained here on the embedded corpus.

Real LLaVA starts stage 1 from someone else's models: a CLIP vision tower (contrastive
image-text pre-training) and a pre-trained LLM (Vicuna), put together by
`mir_jax.weights.hf.build_stage1(clip, vicuna)`. The tiny `:runlocal` model has no such models, so a
connector-only stage 1 on a random vision tower and a random LLM measures nothing. This recipe
trains them, offline, on the embedded corpus (1,500 steps, 15-20 minutes on a 2-core CPU):

* the vision tower by *captioning* (CapPa: "Image Captioners Are Scalable Vision Learners Too",
  Tschannen et al. 2023) instead of CLIP's contrastive loss: images with their captions in the
  plain template, the loss on the caption through the connector and the LLM, all three
  trained. Captioning needs no batch of negatives (a contrastive loss over the dozen images of a
  CPU batch has little to contrast) and trains with the same loss and code path as everything
  else here; CapPa finds its vision features competitive with CLIP's;
* the LLM on text: the `text` passages (language about shapes and colours) and `text_qa`
  conversations (`mir_jax.data.synthetic`), the scene told in words ("In the picture: two
  large red circles on the left and ...") followed by the `qa` kind's questions and answers in
  the vicuna_v1 template, so that the LLM learns to answer questions about a scene it is
  *told* about and instruction tuning only has to teach it to take the scene from the image
  tokens. (In this budget it learns the answers' forms, not yet to read them off the scene.)

Everything trains (vision "all", llm "all", connector). The connector is the one of
`llava15_pretrain.py:runlocal` (mlp2x_gelu on the same tiny model), so stage 1 takes this
workdir's vision tower and LLM and starts a fresh connector on them:

    python train.py --config=configs/stage0.py:runlocal --workdir=S0
    python train.py --config=configs/llava15_pretrain.py:runlocal --workdir=S1 --config.init_from=S0
    python train.py --config=configs/llava15_sft.py:runlocal --workdir=S2 --config.init_from=S1 \
        --config.total_steps=150
    python evaluate.py --checkpoint=S2 --evals=vqa,pope,multiple_choice,caption --num_samples=64

(`llava15_pretrain:runlocal` takes `init_parts="vision,llm"` by default.) What it learns in that
budget, and how far the final scores depend on stage 1 (captioning does; VQA, POPE and multiple
choice stay at chance in every variant): docs/miniature_world.md.

Only `runlocal` exists: at full size stage 0 is a pre-trained CLIP and LLM
(`mir_jax.weights.hf.build_stage1`), not something this repository trains.
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
        # Conversations run to ~460 byte tokens, their first turn to ~310: longer ones lose their
        # last turn.
        {"type": "synthetic", "kind": "text_qa", "template": "vicuna_v1", "weight": 0.25,
         "overlong": "truncate"},
    ])
    c.data.system = SYSTEM
    c.trainable.connector = True
    c.trainable.vision = "all"
    c.trainable.llm = "all"
    # Short rows: at 512 tokens attention halves this model's tokens/s on a CPU.
    c.seq_len = 320
    c.batch_size = 8
    # ~3.8M tokens, 15-20 minutes on a 2-core CPU. A 4-minute stage 0 (550 steps) leaves captions
    # that know shape and size but not colour, and post-SFT scores that do not depend on stage 1
    # (docs/miniature_world.md).
    c.total_steps = 1500
    c.optimizer.lr = 3e-3
    c.checkpoint.every = 500
    c.eval.every = 500
    # The in-loop prompts would be vicuna_v1 (text_qa's), not the plain captions stage 0 trains:
    # caption it with `evaluate.py --checkpoint=S0 --evals=caption --prompt_template=plain`.
    c.eval.sample_captions = 0
    c.evals = []
    return c
