r"""Dump a Hugging Face vision-language model's hidden states for MIR, in the layout
`evaluate.py --hidden_states=PATH` reads (docs/mir.md, section 10).

Run (PyTorch and transformers needed; jax is not):
  python tools/dump_hidden_states.py --model=/path/to/llava-1.5-7b-hf \
      --images=/data/textvqa/train_images --texts=/data/cnn/stories --num_samples=100 \
      --output=/tmp/llava_hidden_states
  python evaluate.py --hidden_states=/tmp/llava_hidden_states

Any checkpoint `AutoModelForImageTextToText` (formerly AutoModelForVision2Seq) loads with its
`AutoProcessor` works: LLaVA, LLaVA-OneVision, Qwen2-VL, Idefics, InternVL (HF format), ...
Sample i pairs the i-th image with the i-th text (files in sorted order of their names; a
.story file is cut at its first @highlight). The prompt is the processor's chat template on one
user turn holding only the image and one assistant turn holding the text, or --prompt, a
string with <image> and {text} (the MIR paper's: "USER: <image>\n ASSISTANT: {text}").

Which positions are which (docs/mir.md, section 2): the vision positions are those whose
input id is the model's image token (config.image_token_id / image_token_index), i.e. the
positions the processor expanded the image into; the text positions are every attended
position after the last vision position. Other positions (system prompt, "USER:", image
markers before the last image token) are stored but in neither mask.

Per sample the file holds SAMPLE/hidden_states [L+1, S, D] (HF's output_hidden_states=True:
index 0 the input embeddings, index L the last layer after the final norm; S the sample's
attended positions), SAMPLE/vision_mask [S] bool and SAMPLE/text_mask [S] bool, in shards of
about --shard_bytes. The library function `dump_hidden_states` takes any iterable of model
input dicts instead (the tests feed it the tiny LLaVA's batches).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys

import numpy as np

FORMAT = "mir-jax.hidden_states"  # the value mir_jax.mir.hidden_states writes and expects
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def image_token_id(model_config) -> int:
    """The input id of the positions an image is expanded into, from the model's config."""
    for config in (model_config, getattr(model_config, "text_config", None)):
        for key in ("image_token_id", "image_token_index"):
            value = getattr(config, key, None)
            if value is not None:
                return int(value)
    raise ValueError("the model's config names no image_token_id / image_token_index")


def mir_masks(input_ids: np.ndarray, attention_mask: np.ndarray, image_id: int):
    """(vision [S], text [S]) bool for one row (docs/mir.md, section 2): vision at image tokens,
    text at attended positions after the last image token."""
    vision = (input_ids == image_id) & (attention_mask != 0)
    positions = np.arange(len(input_ids))
    last = positions[vision].max() if vision.any() else len(input_ids)
    text = (attention_mask != 0) & (positions > last) & ~vision
    return vision, text


class ShardWriter:
    """Writes samples into SHARD-NNNNN.safetensors files of about `shard_bytes` each."""

    def __init__(self, output: str, shard_bytes: int, metadata: dict[str, str]):
        os.makedirs(output, exist_ok=True)
        self.output, self.shard_bytes, self.metadata = output, shard_bytes, metadata
        self.tensors, self.size, self.shards, self.samples = {}, 0, 0, 0

    def add(self, states, vision, text) -> None:
        """states: torch [L+1, S, D]; vision, text: [S] bool."""
        import torch

        name = f"{self.samples:06d}"
        self.tensors[f"{name}/hidden_states"] = states.contiguous()
        self.tensors[f"{name}/vision_mask"] = torch.from_numpy(np.ascontiguousarray(vision))
        self.tensors[f"{name}/text_mask"] = torch.from_numpy(np.ascontiguousarray(text))
        self.size += states.numel() * states.element_size()
        self.samples += 1
        if self.size >= self.shard_bytes:
            self.flush()

    def flush(self) -> None:
        from safetensors.torch import save_file

        if not self.tensors:
            return
        path = os.path.join(self.output, f"shard-{self.shards:05d}.safetensors")
        save_file(self.tensors, path + ".tmp", metadata=self.metadata)
        os.replace(path + ".tmp", path)  # no shard that looks complete and is not
        self.tensors, self.size, self.shards = {}, 0, self.shards + 1


def dump_hidden_states(model, inputs, output: str, *, dtype=None, shard_bytes: int = 2**30,
                       metadata: dict[str, str] | None = None) -> int:
    """Runs `model(**batch, output_hidden_states=True)` on each dict of `inputs` (input_ids and
    attention_mask [B, S] plus the model's image inputs) and writes every row with an image to
    `output` (a directory of shards). dtype: torch dtype to store (default: the model's).
    Returns the number of samples written."""
    import torch

    image_id = image_token_id(model.config)
    writer = ShardWriter(output, shard_bytes, {"format": FORMAT, "embeddings": "included",
                                               "image_token_id": str(image_id), **(metadata or {})})
    for batch in inputs:
        with torch.no_grad():
            out = model(**batch, output_hidden_states=True)
        states = torch.stack(out.hidden_states)  # [L+1, B, S, D]
        ids = batch["input_ids"].cpu().numpy()
        attention = batch["attention_mask"].cpu().numpy()
        for row in range(ids.shape[0]):
            vision, text = mir_masks(ids[row], attention[row], image_id)
            if not vision.any():
                continue  # no image: not a MIR sample
            keep = np.flatnonzero(attention[row] != 0)  # padding is not stored
            row_states = states[:, row, torch.from_numpy(keep)]
            writer.add(row_states.to(dtype) if dtype is not None else row_states,
                       vision[keep], text[keep])
    writer.flush()
    return writer.samples


def _sorted_files(path: str, suffixes) -> list[str]:
    if os.path.isfile(path):
        return [path]
    return sorted(f for f in glob.glob(os.path.join(path, "*")) if f.lower().endswith(suffixes))


def _text(path: str) -> str:
    text = open(path, encoding="utf-8").read()
    return text.split("@highlight")[0].strip() if path.endswith(".story") else text.strip()


def _prompt(processor, template: str | None, text: str) -> str:
    if template:
        return template.replace("{text}", text)
    conversation = [{"role": "user", "content": [{"type": "image"}]},
                    {"role": "assistant", "content": [{"type": "text", "text": text}]}]
    return processor.apply_chat_template(conversation, tokenize=False)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="HF model directory (or hub name already cached)")
    parser.add_argument("--images", required=True, help="image folder (sorted by name) or one image")
    parser.add_argument("--texts", required=True, help="folder of .txt/.story files (sorted) or one file")
    parser.add_argument("--num_samples", type=int, default=100)
    parser.add_argument("--output", required=True, help="directory of safetensors shards to write")
    parser.add_argument("--prompt", default=None, help="template with <image> and {text} "
                        "(default: the processor's chat template)")
    parser.add_argument("--dtype", default=None, choices=["float32", "bfloat16", "float16"],
                        help="model and stored dtype (default: the checkpoint's)")
    parser.add_argument("--max_length", type=int, default=0, help="cut samples at this many tokens")
    parser.add_argument("--shard_gb", type=float, default=1.0, help="about this many GB per shard")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch
    import transformers
    from PIL import Image

    images = _sorted_files(args.images, IMAGE_SUFFIXES)[:args.num_samples]
    texts = _sorted_files(args.texts, (".txt", ".story"))[:args.num_samples]
    if min(len(images), len(texts)) < args.num_samples:
        print(f"dump_hidden_states.py: error: {len(images)} images and {len(texts)} texts for "
              f"--num_samples={args.num_samples}", file=sys.stderr)
        return 2
    processor = transformers.AutoProcessor.from_pretrained(args.model)
    image_id = image_token_id(transformers.AutoConfig.from_pretrained(args.model))
    kwargs = dict(truncation=True, max_length=args.max_length) if args.max_length else {}

    def processed(image_path, text_path):
        with Image.open(image_path) as image:
            rgb = image.convert("RGB")
        return processor(images=[rgb], text=[_prompt(processor, args.prompt, _text(text_path))],
                         return_tensors="pt", **kwargs)

    # Every sample is checked before the model loads, so a bad one costs no model load and
    # leaves no partial dump behind: a cut into the image's positions (the processor refuses
    # it) or a sample with no text position after its image (not a MIR sample).
    cut = f" (--max_length={args.max_length} may be too short)" if args.max_length else ""
    for image_path, text_path in zip(images, texts):
        try:
            batch = processed(image_path, text_path)
        except (ValueError, OSError) as e:
            print(f"dump_hidden_states.py: error: {image_path} with {text_path}: "
                  f"{str(e).strip().splitlines()[0]}{cut}", file=sys.stderr)
            return 2
        vision, text = mir_masks(batch["input_ids"][0].numpy(), batch["attention_mask"][0].numpy(), image_id)
        if not vision.any() or not text.any():
            what = "no image position" if not vision.any() else "no text position after the image"
            print(f"dump_hidden_states.py: error: {image_path} with {text_path}: {what}{cut}", file=sys.stderr)
            return 2

    dtype = getattr(torch, args.dtype) if args.dtype else "auto"
    auto = getattr(transformers, "AutoModelForImageTextToText", None) or transformers.AutoModelForVision2Seq
    model = auto.from_pretrained(args.model, dtype=dtype).to(args.device).eval()

    def inputs():
        for image_path, text_path in zip(images, texts):
            batch = processed(image_path, text_path)
            yield {k: (v.to(args.device, model.dtype) if v.is_floating_point() else v.to(args.device))
                   for k, v in batch.items()}

    count = dump_hidden_states(model, inputs(), args.output, shard_bytes=int(args.shard_gb * 2**30),
                               metadata={"model": args.model})
    print(f"wrote {count} samples to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
