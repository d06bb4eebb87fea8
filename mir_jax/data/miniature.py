"""The miniature world's tokenizer: a small byte-level BPE over the embedded corpus.

The byte tokenizer spends a token per character (vicuna_v1's one-line system prompt alone is
~40 tokens, a scene ~90); this BPE, trained with Hugging Face `tokenizers` on every text the
embedded world writes, makes each of the corpus's words one token while still encoding any
string (unknown text falls back to bytes, so it round-trips everything). It is saved as an
ordinary HF tokenizer directory (`tokenizer.json`, `tokenizer_config.json`) and loaded by the
same `HFTokenizer` that loads a real LLM's tokenizer.

Ids 0-3 are the special tokens `<pad>`, `<s>`, `</s>`, `<image>`, as the byte tokenizer's.

    python -m mir_jax.data.miniature OUT_DIR     # rebuild it (deterministic)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator

from . import synthetic
from .templates import CAPTION_PROMPT, VICUNA_SYSTEM, render

SPECIAL_TOKENS = ("<pad>", "<s>", "</s>", "<image>")
# The shipped tokenizer and base model (configs/common.py: MINIATURE_BASE).
BASE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets", "miniature_base")
# The runlocal recipes' one-line vicuna_v1 system prompt.
SYSTEM = "A chat between a user and an assistant."
# (kind, template) pairs the recipes and evaluators render the corpus with.
_RENDERINGS = (("caption", "plain"), ("caption", "vicuna_v1"), ("text", "document"),
               ("text_qa", "vicuna_v1"), ("qa", "vicuna_v1"), ("interleaved", "document"))
# Prompts written around the corpus's texts: LLaVA's, the pre-trained models' few-shot layout,
# and "ASSISTANT: X", X being the answer placeholder of mir_jax.evals.prompts (it must be one
# token after a space, as real answers' first words are, or prompts end in a lone space).
_PROMPTS = (VICUNA_SYSTEM + " USER: " + CAPTION_PROMPT + " ASSISTANT: X",
            "Question: What colour is it? Answer: red\nAnswer the question using a single word or phrase.")


def corpus_texts(samples_per_kind: int = 400) -> Iterator[str]:
    """Every text the pipeline tokenizes for the embedded corpus (train split), rendered by
    the recipes' templates; each run of text between two images is one string, as the
    pipeline tokenizes it. Then the evaluators' prompts."""
    for kind, template in _RENDERINGS:
        source = synthetic.SyntheticSource(kind, image_size=8)
        for i in range(samples_per_kind):
            run = []
            for segment in render(source[i], template, system=SYSTEM):
                if segment[0] == "text":
                    run.append(segment[1])
                elif segment[0] == "image" and run:
                    yield "".join(run)
                    run = []
            if run:
                yield "".join(run)
    yield from _PROMPTS


def build_tokenizer(samples_per_kind: int = 400):
    """A `transformers.PreTrainedTokenizerFast`: byte-level BPE trained on `corpus_texts`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # Merges stop once every pre-tokenized word is one token, well below this size.
    trainer = trainers.BpeTrainer(vocab_size=1024, min_frequency=1, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(corpus_texts(samples_per_kind), trainer=trainer)
    pad, bos, eos, image = SPECIAL_TOKENS
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad,
                                   extra_special_tokens=[image], model_max_length=1024)


def main(argv: list[str]) -> None:
    if len(argv) != 2:
        sys.exit("usage: python -m mir_jax.data.miniature OUT_DIR")
    tok = build_tokenizer()
    tok.save_pretrained(argv[1])
    print(f"wrote {argv[1]}: {len(tok)} tokens")


if __name__ == "__main__":
    main(sys.argv)
