"""Test-only: re-draw a tiny torch model's weights at unit scale.

HF's 0.02 initialization makes every activation so small (and every layer so alike) that real
bugs hide under a 1e-4 tolerance; unit-scale weights make parity and MIR tests sensitive.
"""

import math


def randomize_unit_scale(model, seed: int) -> None:
    """Norm scales ~ 1 + 0.2 N(0,1); biases and other vectors ~ 0.2 N(0,1); matrices ~ N(0, 1/fan_in)."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=generator)
            if p.ndim == 1 and name.endswith("weight"):
                p.copy_(1 + 0.2 * r)
            elif p.ndim == 1:
                p.copy_(0.2 * r)
            else:
                p.copy_(r / math.sqrt(math.prod(p.shape[1:])))


def save_random_llava(config, seed: int, directory: str):
    """An HF LlavaForConditionalGeneration with unit-scale random weights, saved in HF's own
    format to `directory`. Returns the (eval-mode) torch model."""
    import torch
    import transformers

    torch.manual_seed(seed)
    model = transformers.LlavaForConditionalGeneration(config).eval()
    randomize_unit_scale(model, seed)
    model.save_pretrained(directory)
    return model


def tiny_llava_config(tokenizer, image_size: int = 28, patch: int = 7):
    """The tests' tiny HF LlavaConfig: CLIP (2 layers, 32 wide) + Llama (3 layers, 48 wide, GQA
    4/2) for `tokenizer`'s vocabulary and special ids; image_size/patch give (28/7)**2 = 16
    image tokens."""
    import transformers

    vision = transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                           num_attention_heads=4, image_size=image_size, patch_size=patch)
    text = transformers.LlamaConfig(hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                                    num_attention_heads=4, num_key_value_heads=2,
                                    vocab_size=tokenizer.vocab_size, pad_token_id=tokenizer.pad_id,
                                    eos_token_id=tokenizer.eos_id, bos_token_id=tokenizer.bos_id)
    return transformers.LlavaConfig(vision_config=vision, text_config=text,
                                    image_token_id=tokenizer.image_token_id)
