"""MIR of a model on image + unrelated-text batches, end to end (the MIR paper's use case),
and `MirEvaluator`, the same under the evaluator interface.

The published tool runs one forward pass per sample, copies every layer's hidden
states to the host and loops over layers with SciPy. Here a jitted forward pass
runs on whole batches and hands device-resident hidden states to either

  mode="streaming": `MIRAccumulator` (per-layer statistics only; memory does not grow
      with the number of samples; two passes over the data when outliers are
      removed, because the 3-sigma rule needs global statistics, and a third when
      the first batch is unlike the rest), or
  mode="exact": the selected vision/text rows of all samples are kept (on the host)
      and `compute_mir` runs once at the end (memory grows with the samples).

Batches follow the data-pipeline contract (`mir_jax.data.pipeline`): input_ids with
each image expanded into K image tokens, labels (-100 where no loss), segment_ids (0 on
padding), positions, pixel_values [B, 1, H, W, 3], image_mask [B, 1]. The training loop's
in-loop MIR is this same function on its own fixed batches.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh
from tqdm.auto import tqdm

from mir_jax import mir
from mir_jax.mir.tokens import mir_rows, mir_token_masks
from mir_jax.models.forward import LOSS_INPUTS, forward, loss_sums

from .base import EvalResult, Evaluator, bind_model, register

MODES = ("streaming", "exact")


@dataclasses.dataclass
class MIREvaluation:
    """Everything one MIR evaluation measured.

    per_layer: [L] Fréchet distance per decoder layer; overall: log10(sum(per_layer)).
    lm_loss: mean next-token NLL on the text (label) tokens; perplexity: exp(lm_loss).
    diagnostics: the method's per-layer diagnostics ({"drift", "condition"} for
    published_fast, see `mir.published_fast_verdict`), {} for the others.
    """

    per_layer: np.ndarray
    overall: float
    method: str
    mode: str
    num_samples: int
    num_vision_tokens: int
    num_text_tokens: int
    lm_loss: float
    perplexity: float
    timings: dict
    diagnostics: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["per_layer"] = [float(x) for x in self.per_layer]
        d["diagnostics"] = {k: [float(x) for x in np.asarray(v)] for k, v in self.diagnostics.items()}
        note = mir.method_note(self.method)
        if note:
            d["note"] = note
        if self.method == "published_fast" and self.diagnostics:
            d["verdict"] = mir.published_fast_verdict(self.diagnostics)
        return d

    def format(self) -> str:
        """The per-layer table, overall MIR and the method's notes, as `mir.format_mir` prints."""
        return mir.format_mir(mir.MIRResult(self.per_layer, self.overall), self.method,
                              self.diagnostics)


def mir_forward(model, batch) -> tuple:
    """Model forward + MIR token selection + label NLL sums, traceable (see `make_forward`;
    the dry run compiles this for the training loop's mesh)."""
    out = forward(model, batch, hidden_states=True)
    vision_mask, text_mask = mir_token_masks(out.modality_mask, batch["segment_ids"])
    rows, vision_rows, text_rows = mir_rows(out.hidden_states.astype(jnp.float32),
                                            vision_mask, text_mask)
    sums = loss_sums(out.logits, batch["labels"])
    return rows, vision_rows, text_rows, sums["ce_sum"], sums["tokens"]


@functools.partial(jax.jit, static_argnums=0)
def _jitted_mir_forward(graphdef, state, batch):
    return mir_forward(nnx.merge(graphdef, state), batch)


def make_forward(model: nnx.Module, mesh: Mesh | None = None):
    """A function batch -> (rows, vision_mask, text_mask, nll_sum, nll_count), jitted.

    rows [L, B*S, D] float32 are layers 1..L of the hidden states (the embeddings are
    not a layer); the masks [B*S] select MIR's vision and text tokens; the NLL sums
    are over label positions, for the language-model loss on the texts. The compiled
    program is shared by every model with the same structure (graphdef) and shapes.
    With a mesh, see `base.bind_model` (multi-host safe).
    """
    return bind_model(model, mesh, _jitted_mir_forward, LOSS_INPUTS)


def evaluate_mir(
    model: nnx.Module,
    batches: Callable[[], Iterable[dict]],
    *,
    method: str = "auto",
    mode: str = "streaming",
    mesh: Mesh | None = None,
    normalize: bool = True,
    remove_outliers: bool = True,
    progress: bool = True,
    num_batches: int | None = None,
) -> MIREvaluation:
    """MIR (per layer and overall) and the LM loss of `model` on MIR evaluation batches.

    Args:
      model: a `mir_jax.models.LlavaModel` (or anything with its call signature).
      batches: callable returning a fresh iterable of batches (called once per pass).
      method: MIR method (see `mir_jax.mir`); "legacy_fast" and "published_fast" are not
        Fréchet distances.
      mode: "streaming" (constant memory) or "exact" (holds all selected tokens).
      mesh: optional device mesh: batches are sharded over (data, fsdp), parameters by
        the logical-axis rules, and streaming statistics are combined with a psum.
      num_batches: for the progress bar only.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    run_forward = make_forward(model, mesh)
    timings = {"forward_s": 0.0, "mir_s": 0.0}
    counts = {"samples": 0, "vision": 0, "text": 0, "nll": 0.0, "nll_tokens": 0}
    start = time.perf_counter()

    def sweep(consume, description, count_tokens):
        for batch in tqdm(batches(), desc=description, total=num_batches, disable=not progress,
                          unit="batch", leave=False):
            t0 = time.perf_counter()
            rows, vision_mask, text_mask, nll, nll_count = run_forward(batch)
            jax.block_until_ready(rows)
            timings["forward_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            consume(rows, vision_mask, text_mask)
            timings["mir_s"] += time.perf_counter() - t0
            if count_tokens:
                counts["samples"] += int(np.sum(np.any(np.asarray(batch["segment_ids"]) != 0, axis=1)))
                counts["vision"] += int(jnp.sum(vision_mask))
                counts["text"] += int(jnp.sum(text_mask))
                counts["nll"] += float(nll)
                counts["nll_tokens"] += int(nll_count)

    if mode == "streaming":
        accumulator = mir.MIRAccumulator(method=method, normalize=normalize,
                                         remove_outliers=remove_outliers, mesh=mesh)
        while accumulator.needs_another_pass:  # num_passes grows by one if the medians need it
            index = accumulator.current_pass
            sweep(lambda r, v, t: accumulator.update(r, r, v, t),
                  f"MIR pass {index + 1}/{accumulator.num_passes}", count_tokens=index == 0)
            accumulator.end_pass()
        t0 = time.perf_counter()
        result = accumulator.result()
        diagnostics = accumulator.diagnostics
        resolved = accumulator.method
    else:
        vision_rows, text_rows = [], []

        def keep(rows, vision_mask, text_mask):
            rows = np.asarray(rows)
            vision_rows.append(rows[:, np.asarray(vision_mask)])
            text_rows.append(rows[:, np.asarray(text_mask)])

        sweep(keep, "MIR (exact)", count_tokens=True)
        t0 = time.perf_counter()
        vision = np.concatenate(vision_rows, axis=1)
        text = np.concatenate(text_rows, axis=1)
        if vision.shape[1] < 2 or text.shape[1] < 2:
            raise ValueError(f"too few tokens for MIR: {vision.shape[1]} vision, {text.shape[1]} text")
        resolved = mir.resolve_method(method, vision.shape[1], text.shape[1], vision.shape[2])
        result, diagnostics = mir.compute_mir(vision, text, method=resolved, normalize=normalize,
                                              remove_outliers=remove_outliers,
                                              return_diagnostics=True)
    per_layer = np.asarray(jax.block_until_ready(result.per_layer))
    timings["mir_s"] += time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - start
    if counts["vision"] < 2 or counts["text"] < 2:
        raise ValueError(f"too few tokens for MIR: {counts['vision']} vision, {counts['text']} text "
                         "(do the batches contain images followed by text?)")
    lm_loss = counts["nll"] / max(counts["nll_tokens"], 1)
    return MIREvaluation(
        per_layer=per_layer, overall=float(result.overall), method=resolved, mode=mode,
        num_samples=counts["samples"], num_vision_tokens=counts["vision"],
        num_text_tokens=counts["text"], lm_loss=lm_loss, perplexity=float(np.exp(lm_loss)),
        timings=timings, diagnostics={k: np.asarray(v) for k, v in diagnostics.items()})


def plot_per_layer(results: dict[str, MIREvaluation], path: str) -> list[float]:
    """One PNG: per-layer FD (log scale) of one or several models, overall MIR in the legend.
    Returns the layer ticks drawn on the x axis (whole numbers)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, res in results.items():
        layers = np.arange(1, len(res.per_layer) + 1)
        label = f"{name} (MIR {res.overall:.3f})"
        if mir.method_note(res.method):
            label += f" [{res.method}: not a Fréchet distance]"
        ax.plot(layers, res.per_layer, marker="o", label=label)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.set_yscale("log")
    ax.set_xlabel("decoder layer")
    ax.set_ylabel("Fréchet distance (vision vs text)")
    ax.set_title("Modality Integration Rate per layer")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    ticks = [float(t) for t in ax.get_xticks()]
    plt.close(fig)
    return ticks


@register
class MirEvaluator(Evaluator):
    """MIR (per layer, overall) and the LM loss on images paired with unrelated texts.

    Options: images, texts ("synthetic", a path, or a source object; see
    `mir_jax.data.make_mir_iterator`), image_folder, num_samples, template (the MIR paper's
    vicuna_v1), method, mode, batch_size, seq_len (0: the model's context; longer samples are
    cut there and counted), seed, progress. Scores: "mir" (overall), "lm_loss"; details:
    "evaluation" (the `MIREvaluation`) and "data" (what was fed, truncations included).
    """

    name = "mir"
    OPTIONS = {"images": "synthetic", "texts": "synthetic", "image_folder": None, "num_samples": 100,
               "template": "vicuna_v1", "method": "auto", "mode": "streaming", "batch_size": 8,
               "seq_len": 0, "seed": 0, "progress": False}

    def check_options(self):
        super().check_options()
        if self.options["method"] not in mir.METHODS:
            raise ValueError(f"evaluator 'mir': method={self.options['method']!r} not in {tuple(mir.METHODS)}")
        if self.options["mode"] not in MODES:
            raise ValueError(f"evaluator 'mir': mode={self.options['mode']!r} not in {MODES}")

    def run(self, model) -> EvalResult:
        from mir_jax.data import make_mir_iterator, mir_sample_lengths

        o = self.options
        context = model.context
        seq_len = int(o["seq_len"]) or context
        text_kwargs = dict(tokenizer=model.tokenizer, num_samples=int(o["num_samples"]),
                           num_image_tokens=model.num_image_tokens, template=o["template"],
                           seed=int(o["seed"]), image_folder=o["image_folder"])
        lengths = mir_sample_lengths(o["images"], o["texts"], **text_kwargs)  # validates the data
        truncated = int((lengths > seq_len).sum())
        data_kwargs = dict(text_kwargs, image_size=model.image.size, mean=model.image.mean,
                           std=model.image.std, batch_size=int(o["batch_size"]), seq_len=seq_len,
                           image_mode=model.image.mode, sort_by_length=True, lengths=lengths)
        evaluation = evaluate_mir(
            model.model, lambda: make_mir_iterator(o["images"], o["texts"], **data_kwargs),
            method=o["method"], mode=o["mode"], mesh=model.mesh, progress=bool(o["progress"]),
            num_batches=-(-int(o["num_samples"]) // int(o["batch_size"])))
        data = dict(seq_len=seq_len, truncated_samples=truncated, longest_sample=int(lengths.max()),
                    truncated_by=("seq_len" if o["seq_len"] else "context"),
                    num_image_tokens=model.num_image_tokens, image_size=model.image.size,
                    image_mode=model.image.mode)
        return self.result({"mir": evaluation.overall, "lm_loss": evaluation.lm_loss},
                           details={"evaluation": evaluation, "data": data})
