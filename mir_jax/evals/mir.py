"""MIR of a model on image + unrelated-text batches, end to end (the MIR paper's use case),
and `MirEvaluator`, the same under the evaluator interface.

A jitted forward pass runs on whole batches and hands device-resident hidden states to
`MIRAccumulator` (mode="streaming", constant memory) or keeps the selected rows on the host for
one `compute_mir` (mode="exact"); docs/evaluation.md compares this with the published tool.
Batches follow the data-pipeline contract (`mir_jax.data.pipeline`).
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

from .base import EvalResult, Evaluator, auto_batch_size, bind_model, register

MODES = ("streaming", "exact")
NORM_FIELDS = ("vision_norm_per_layer", "text_norm_per_layer")  # MIRResult's and MIREvaluation's


@dataclasses.dataclass
class MIREvaluation:
    """Everything one MIR evaluation measured.

    per_layer: [L] Fréchet distance per decoder layer; overall: log10(sum(per_layer)).
    lm_loss: mean next-token NLL on the text (label) tokens; perplexity: exp(lm_loss).
    diagnostics: the method's per-layer diagnostics (published_fast), {} for the others.
    interval: with uncertainty="jackknife", the `MIRResult` interval fields (per_layer_se [L],
    per_layer_interval [L, 2], overall_se, overall_interval [2], per_layer_replicates [G, L],
    overall_replicates [G]) plus "num_groups" and "level"; else {}.
    vision_norm_per_layer, text_norm_per_layer: [L] mean L2 norm of the vision / text rows
    before MIR's rules, which say whether MIR moved by scale or alignment (docs/mir.md,
    section 4); None where not measured.
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
    interval: dict = dataclasses.field(default_factory=dict)
    vision_norm_per_layer: np.ndarray | None = None
    text_norm_per_layer: np.ndarray | None = None

    def result(self) -> mir.MIRResult:
        """The values as a `mir.MIRResult` (with the interval and norm fields when there are some)."""
        fields = {k: np.asarray(v) for k, v in self.interval.items() if k in mir.MIRResult._fields}
        for k in NORM_FIELDS:
            if getattr(self, k) is not None:
                fields[k] = np.asarray(getattr(self, k))
        return mir.MIRResult(np.asarray(self.per_layer), np.asarray(self.overall), **fields)

    def to_json(self) -> dict:
        d = dataclasses.asdict(self)
        d["per_layer"] = [float(x) for x in self.per_layer]
        for k in NORM_FIELDS:
            d[k] = None if getattr(self, k) is None else [float(x) for x in getattr(self, k)]
        d["diagnostics"] = {k: [float(x) for x in np.asarray(v)] for k, v in self.diagnostics.items()}
        d["interval"] = {k: np.asarray(v).tolist() for k, v in self.interval.items()}
        note = mir.method_note(self.method)
        if note:
            d["note"] = note
        if self.method == "published_fast" and self.diagnostics:
            d["verdict"] = mir.published_fast_verdict(self.diagnostics)
        return d

    def format(self) -> str:
        """The per-layer table, overall MIR and the method's notes, as `mir.format_mir` prints."""
        return mir.format_mir(self.result(), self.method, self.diagnostics,
                              level=self.interval.get("level", 0.95))


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
    """A jitted function batch -> (rows [L, B*S, D] float32 of layers 1..L, vision_mask [B*S],
    text_mask [B*S], nll_sum, nll_count), the NLL over label positions; with a mesh see
    `base.bind_model`.
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
    uncertainty: str | None = None,
    num_groups: int = 10,
    sample_order=None,
) -> MIREvaluation:
    """MIR (per layer and overall) and the LM loss of `model` on MIR evaluation batches.

    Args:
      model: a `mir_jax.models.LlavaModel` (or anything with its call signature).
      batches: callable returning a fresh iterable of batches (called once per pass).
      method: MIR method (see `mir_jax.mir`).
      mode: "streaming" (constant memory) or "exact" (holds all selected tokens).
      mesh: optional device mesh (batches over (data, fsdp), statistics combined by psum).
      num_batches: for the progress bar only.
      uncertainty: None, or "jackknife" (mode="exact" only): 95 % intervals over `num_groups`
        groups of samples (docs/mir.md, section 9).
      sample_order: [num_samples] int, the source index of the k-th sample the batches hold,
        so groups hold the same samples for every model; default: the batches' order.

    Returns:
      A `MIREvaluation`.
    """
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; expected one of {MODES}")
    if uncertainty is not None and mode != "exact":
        raise ValueError(f"uncertainty={uncertainty!r} needs mode='exact' (--mode=exact): the "
                         "streaming accumulator keeps no per-group statistics")
    run_forward = make_forward(model, mesh)
    timings = {"forward_s": 0.0, "mir_s": 0.0}
    counts = {"samples": 0, "vision": 0, "text": 0, "nll": 0.0, "nll_tokens": 0}
    start = time.perf_counter()

    def sweep(consume, description, count_tokens):
        seen = 0  # samples before this batch
        for batch in tqdm(batches(), desc=description, total=num_batches, disable=not progress,
                          unit="batch", leave=False):
            t0 = time.perf_counter()
            rows, vision_mask, text_mask, nll, nll_count = run_forward(batch)
            jax.block_until_ready(rows)
            timings["forward_s"] += time.perf_counter() - t0
            t0 = time.perf_counter()
            # The sample of every token position [B*S]: -1 on padding rows.
            filled = np.any(np.asarray(batch["segment_ids"]) != 0, axis=1)
            position = np.where(filled, seen + np.cumsum(filled) - 1, -1)
            if sample_order is not None:
                position = np.where(position >= 0, np.asarray(sample_order)[np.maximum(position, 0)], -1)
            seen += int(filled.sum())
            consume(rows, vision_mask, text_mask, np.repeat(position, np.shape(batch["segment_ids"])[1]))
            timings["mir_s"] += time.perf_counter() - t0
            if count_tokens:
                counts["samples"] += int(filled.sum())
                counts["vision"] += int(jnp.sum(vision_mask))
                counts["text"] += int(jnp.sum(text_mask))
                counts["nll"] += float(nll)
                counts["nll_tokens"] += int(nll_count)

    if mode == "streaming":
        accumulator = mir.MIRAccumulator(method=method, normalize=normalize,
                                         remove_outliers=remove_outliers, mesh=mesh)
        while accumulator.needs_another_pass:  # num_passes grows by one if the medians need it
            index = accumulator.current_pass
            sweep(lambda r, v, t, _: accumulator.update(r, r, v, t),
                  f"MIR pass {index + 1}/{accumulator.num_passes}", count_tokens=index == 0)
            accumulator.end_pass()
        t0 = time.perf_counter()
        result = accumulator.result()
        diagnostics = accumulator.diagnostics
        resolved = accumulator.method
    else:
        vision_rows, text_rows, vision_samples, text_samples = [], [], [], []

        def keep(rows, vision_mask, text_mask, samples):
            rows, vision_mask, text_mask = np.asarray(rows), np.asarray(vision_mask), np.asarray(text_mask)
            vision_rows.append(rows[:, vision_mask])
            text_rows.append(rows[:, text_mask])
            vision_samples.append(samples[vision_mask])
            text_samples.append(samples[text_mask])

        sweep(keep, "MIR (exact)", count_tokens=True)
        t0 = time.perf_counter()
        vision = np.concatenate(vision_rows, axis=1)
        text = np.concatenate(text_rows, axis=1)
        if vision.shape[1] < 2 or text.shape[1] < 2:
            raise ValueError(f"too few tokens for MIR: {vision.shape[1]} vision, {text.shape[1]} text")
        resolved = mir.resolve_method(method, vision.shape[1], text.shape[1], vision.shape[2])
        groups = {}
        if uncertainty is not None:
            vision_groups, text_groups = mir.jackknife_groups(
                np.concatenate(vision_samples), np.concatenate(text_samples), num_groups)
            groups = dict(uncertainty=uncertainty, vision_groups=vision_groups, text_groups=text_groups)
        result, diagnostics = mir.compute_mir(vision, text, method=resolved, normalize=normalize,
                                              remove_outliers=remove_outliers,
                                              return_diagnostics=True, **groups)
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
        timings=timings, diagnostics={k: np.asarray(v) for k, v in diagnostics.items()},
        interval=interval_fields(result, num_groups) if uncertainty is not None else {},
        **norm_fields(result))


def norm_fields(result: mir.MIRResult) -> dict:
    """The mean row norms of a result ([L] host arrays), as `MIREvaluation`'s keyword arguments."""
    return {k: np.asarray(getattr(result, k)) for k in NORM_FIELDS if getattr(result, k) is not None}


def interval_fields(result: mir.MIRResult, num_groups: int) -> dict:
    """The interval fields of a `compute_mir` result, as host arrays, for `MIREvaluation`."""
    names = ("per_layer_se", "per_layer_interval", "overall_se", "overall_interval",
             "per_layer_replicates", "overall_replicates")
    return {**{k: np.asarray(getattr(result, k)) for k in names}, "num_groups": num_groups, "level": 0.95}


def plot_per_layer(results: dict[str, MIREvaluation], path: str) -> list[float]:
    """One PNG: per-layer FD of one or several models (overall MIR in the legend) and, where
    measured, their vision and text hidden-state norms per layer; returns the x-axis ticks."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.ticker import MaxNLocator

    with_norms = [name for name, res in results.items() if res.vision_norm_per_layer is not None]
    if with_norms:
        fig, (ax, ax_norm) = plt.subplots(2, 1, figsize=(7, 6.5), sharex=True,
                                          gridspec_kw={"height_ratios": (3, 2)})
    else:
        fig, ax = plt.subplots(figsize=(7, 4))
    for name, res in results.items():
        layers = np.arange(1, len(res.per_layer) + 1)
        label = f"{name} (MIR {res.overall:.3f})"
        if mir.method_note(res.method):
            label += f" [{res.method}: not a Fréchet distance]"
        line, = ax.plot(layers, res.per_layer, marker="o", label=label)
        if res.interval:  # the 95 % interval over sample groups, as a band
            low, high = np.asarray(res.interval["per_layer_interval"]).T
            ax.fill_between(layers, np.maximum(low, 1e-12), high, color=line.get_color(), alpha=0.2)
        if name in with_norms:
            ax_norm.plot(layers, res.vision_norm_per_layer, color=line.get_color(), marker="s", ms=4)
            ax_norm.plot(layers, res.text_norm_per_layer, color=line.get_color(), marker="^", ms=4,
                         linestyle="--")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # layers are whole numbers
    ax.set_yscale("log")
    ax.set_ylabel("Fréchet distance (vision vs text)")
    if with_norms:
        ax_norm.set_yscale("log")
        ax_norm.set_xlabel("decoder layer")
        ax_norm.set_ylabel("mean ||h||₂ (before MIR's rules)")
        ax_norm.grid(True, which="both", alpha=0.3)
        ax_norm.legend([Line2D([], [], color="0.3", marker="s", ms=4),
                        Line2D([], [], color="0.3", marker="^", ms=4, linestyle="--")],
                       ["vision tokens", "text tokens"], fontsize=8)
    else:
        ax.set_xlabel("decoder layer")
    bands = any(res.interval for res in results.values())
    ax.set_title("Modality Integration Rate per layer" + (
        "\nbands: 95 % jackknife intervals over samples (centred on the bias-corrected value)"
        if bands else ""), fontsize=10 if bands else None)
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

    Options: images, texts (see `mir_jax.data.make_mir_iterator`), image_folder, num_samples,
    template, method, mode, batch_size (0: picked for the mesh), seq_len (0: the model's
    context), seed, progress. Scores: "mir", "lm_loss"; details: "evaluation" (the
    `MIREvaluation`) and "data" (what was fed, truncations included).
    """

    name = "mir"
    split = "eval"
    auto_batch = True
    OPTIONS = {"images": "synthetic", "texts": "synthetic", "image_folder": None, "num_samples": 100,
               "template": "vicuna_v1", "method": "auto", "mode": "streaming", "batch_size": 8,
               "seq_len": 0, "seed": 0, "progress": False, "uncertainty": None, "num_groups": 10}
    fixed: list[dict] | None = None  # the fixed batches, once prepared
    _data: dict | None = None

    def check_options(self):
        super().check_options()
        if self.options["method"] not in mir.METHODS:
            raise ValueError(f"evaluator 'mir': method={self.options['method']!r} not in {tuple(mir.METHODS)}")
        if self.options["mode"] not in MODES:
            raise ValueError(f"evaluator 'mir': mode={self.options['mode']!r} not in {MODES}")
        if self.options["uncertainty"] not in (None, *mir.ESTIMATORS):
            raise ValueError(f"evaluator 'mir': uncertainty={self.options['uncertainty']!r} not in "
                             f"{(None, *mir.ESTIMATORS)}")
        if self.options["uncertainty"] and self.options["mode"] != "exact":
            raise ValueError("evaluator 'mir': uncertainty needs mode='exact' (--mode=exact): the "
                             "streaming accumulator keeps no per-group statistics")

    @classmethod
    def loop_options(cls, options, run_config):
        out = dict(options)
        out["seq_len"] = int(out.get("seq_len") or 0) or int(run_config.seq_len)
        return out

    def _data_kwargs(self, model) -> dict:
        o = self.options
        return dict(tokenizer=model.tokenizer, num_samples=int(o["num_samples"]),
                    num_image_tokens=model.num_image_tokens, template=o["template"], seed=int(o["seed"]),
                    image_folder=o["image_folder"])

    def _data_details(self, model, seq_len: int, lengths) -> dict:
        return dict(seq_len=seq_len, truncated_samples=int((lengths > seq_len).sum()),
                    longest_sample=int(lengths.max()), truncated_by=("seq_len" if self.options["seq_len"] else "context"),
                    num_image_tokens=model.num_image_tokens, image_size=model.image.size,
                    image_mode=model.image.mode)

    def prepare(self, model) -> None:
        from mir_jax.data import make_mir_batches, mir_sample_lengths

        o = self.options
        seq_len = int(o["seq_len"]) or model.context
        text_kwargs = self._data_kwargs(model)
        lengths = mir_sample_lengths(o["images"], o["texts"], **text_kwargs)  # validates the data
        self.fixed = make_mir_batches(
            o["images"], o["texts"], **text_kwargs, image_size=model.image.size, mean=model.image.mean,
            std=model.image.std, batch_size=auto_batch_size(o["batch_size"], model.mesh), seq_len=seq_len,
            image_mode=model.image.mode)
        self._data = self._data_details(model, seq_len, lengths)

    def run(self, model) -> EvalResult:
        from mir_jax.data import make_mir_iterator, mir_sample_lengths

        o = self.options
        common = dict(method=o["method"], mode=o["mode"], mesh=model.mesh, progress=bool(o["progress"]),
                      uncertainty=o["uncertainty"], num_groups=int(o["num_groups"]))
        if self.fixed is not None:
            batches, data = self.fixed, self._data
            evaluation = evaluate_mir(model.model, lambda: batches, num_batches=len(batches), **common)
        else:
            seq_len = int(o["seq_len"]) or model.context
            text_kwargs = self._data_kwargs(model)
            lengths = mir_sample_lengths(o["images"], o["texts"], **text_kwargs)  # validates the data
            batch_size = auto_batch_size(o["batch_size"], model.mesh)
            data_kwargs = dict(text_kwargs, image_size=model.image.size, mean=model.image.mean,
                               std=model.image.std, batch_size=batch_size, seq_len=seq_len,
                               image_mode=model.image.mode, sort_by_length=True, lengths=lengths)
            evaluation = evaluate_mir(
                model.model, lambda: make_mir_iterator(o["images"], o["texts"], **data_kwargs),
                num_batches=-(-int(o["num_samples"]) // batch_size),
                sample_order=np.argsort(-np.asarray(lengths), kind="stable"), **common)  # the iterator's order
            data = self._data_details(model, seq_len, lengths)
        return self.result({"mir": evaluation.overall, "lm_loss": evaluation.lm_loss},
                           details={"evaluation": evaluation, "data": data})

    def metrics(self, result, key):
        # The loop's "eval" row as ever: mir, mir_per_layer, the norms, what it was computed on.
        e = result.details["evaluation"]
        return {key: float(e.overall), f"{key}_per_layer": np.asarray(e.per_layer).tolist(),
                # The mean raw norms each layer's FD came from: whether MIR moved by alignment or scale.
                f"{key}_vision_norm_per_layer": np.asarray(e.vision_norm_per_layer).tolist(),
                f"{key}_text_norm_per_layer": np.asarray(e.text_norm_per_layer).tolist(),
                f"{key}_samples": e.num_samples, f"{key}_vision_tokens": e.num_vision_tokens,
                f"{key}_text_tokens": e.num_text_tokens, f"{key}_row_length": result.details["data"]["seq_len"]}

    def report(self, result, key):
        e = result.details["evaluation"]
        return (f"{key}={e.overall:.4f} (MIR over {e.num_samples} samples, {e.num_vision_tokens} vision / "
                f"{e.num_text_tokens} text tokens, rows of {result.details['data']['seq_len']})")
