"""Parity with HF transformers' PyTorch LLaVA (float32, 1e-4 max-abs on logits and every hidden
state), checkpoint layouts (HF, original LLaVA, stage 1), save round trip and greedy generation.

Tiny random HF models are built here with torch; their weights are re-drawn at unit scale
(HF's 0.02 init would make every activation so small that real bugs hide under 1e-4).
"""

import json
import os
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the HF PyTorch models are the reference here; pip install torch (a CPU build: see README)")
transformers = pytest.importorskip("transformers")

from mir_jax.models import generate  # noqa: E402
from mir_jax.weights import hf as mhf  # noqa: E402
from mir_jax.weights import load_weights  # noqa: E402
from tests.torch_init import save_random_llava  # noqa: E402

TOL = 1e-4
IMG = 28  # 4x4 patches of 7 px -> 16 patches


def _clip_cfg():
    return transformers.CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                         num_attention_heads=4, image_size=IMG, patch_size=7)


def _llama_cfg():
    return transformers.LlamaConfig(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                    num_attention_heads=4, num_key_value_heads=4, vocab_size=128,
                                    rope_theta=500.0, pad_token_id=0, eos_token_id=2)


@pytest.fixture(scope="module")
def clip_llama(tmp_path_factory):
    """CLIP + Llama (MHA), HF defaults: layer -2, drop CLS -> K = 16."""
    cfg = transformers.LlavaConfig(vision_config=_clip_cfg(), text_config=_llama_cfg(), image_token_id=127)
    d = str(tmp_path_factory.mktemp("clip_llama"))
    return d, save_random_llava(cfg, 0, d)


@pytest.fixture(scope="module")
def siglip_qwen(tmp_path_factory):
    """SigLIP + Qwen2 (GQA, qkv bias, tied embeddings), last layer, all tokens -> K = 16."""
    vc = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                         num_attention_heads=4, image_size=IMG, patch_size=7)
    tc = transformers.Qwen2Config(hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                  num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                  tie_word_embeddings=True, pad_token_id=0, eos_token_id=2)
    cfg = transformers.LlavaConfig(vision_config=vc, text_config=tc, image_token_id=126,
                                   vision_feature_layer=-1, vision_feature_select_strategy="full")
    d = str(tmp_path_factory.mktemp("siglip_qwen"))
    return d, save_random_llava(cfg, 1, d)


def _hf_run(m, ids, am, px_list):
    px = torch.tensor(np.stack(px_list)).permute(0, 3, 1, 2) if px_list else None
    with torch.no_grad():
        o = m(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am), pixel_values=px,
              output_hidden_states=True)
    return o.logits.numpy(), [h.numpy() for h in o.hidden_states]


def _compare(ours, theirs_logits, theirs_hidden, am):
    valid = am.astype(bool)
    lo = np.asarray(ours.logits)
    assert np.abs(theirs_logits[valid]).max() > 0.5  # non-trivial numbers
    np.testing.assert_allclose(lo[valid], theirs_logits[valid], atol=TOL, rtol=0)
    hs = np.asarray(ours.hidden_states)
    assert hs.shape[0] == len(theirs_hidden)
    for i, h in enumerate(theirs_hidden):
        np.testing.assert_allclose(hs[i][valid], h[valid], atol=TOL, rtol=0, err_msg=f"hidden state {i}")


def _images(n, seed):
    return [np.random.default_rng(seed + i).standard_normal((IMG, IMG, 3)).astype(np.float32) for i in range(n)]


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_clip_llama_padded_batch_matches_hf(clip_llama):
    path, hfm = clip_llama
    cfg, model = load_weights(path)[:2]
    k = cfg.num_image_tokens
    assert k == 16 and cfg.vision.kind == "clip" and cfg.vision_feature_layer == -2
    # Two rows of different length, right padding (HF's default), one image each.
    ids = np.array([[1, 5, 6] + [127] * k + [7, 8, 9, 10, 11], [1, 5] + [127] * k + [7, 8, 0, 0, 0, 0]])
    am = (np.arange(ids.shape[1])[None] < np.array([[k + 8], [k + 4]])).astype(np.int64)
    imgs = _images(2, 0)
    ref_logits, ref_hidden = _hf_run(hfm, ids, am, imgs)
    out = model(jnp.asarray(ids), jnp.asarray(np.stack(imgs))[:, None], jnp.ones((2, 1), bool),
                jnp.asarray(am), output_hidden_states=True)
    _compare(out, ref_logits, ref_hidden, am)
    assert np.array_equal(np.asarray(out.modality_mask), ids == 127)


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_siglip_qwen_interleaved_and_text_only_left_padded(siglip_qwen):
    path, hfm = siglip_qwen
    cfg, model = load_weights(path)[:2]
    k = cfg.num_image_tokens
    assert (cfg.vision.kind, k, cfg.text.num_kv_heads, cfg.text.qkv_bias, cfg.text.o_bias,
            cfg.text.tie_word_embeddings) == ("siglip", 16, 2, True, False, True)
    # Row 0: two interleaved images; row 1: text only, left padded.
    row0 = [1, 5] + [126] * k + [7, 8] + [126] * k + [9]
    row1 = [1, 5, 6, 7, 8, 9, 10]
    s = len(row0)
    ids = np.array([row0, [0] * (s - len(row1)) + row1])
    am = np.array([[1] * s, [0] * (s - len(row1)) + [1] * len(row1)])
    imgs = _images(2, 10)
    ref_logits, ref_hidden = _hf_run(hfm, ids, am, imgs)
    px = np.zeros((2, 2, IMG, IMG, 3), np.float32)
    px[0] = np.stack(imgs)
    mask = np.array([[True, True], [False, False]])
    out = model(jnp.asarray(ids), jnp.asarray(px), jnp.asarray(mask), jnp.asarray(am), output_hidden_states=True)
    _compare(out, ref_logits, ref_hidden, am)


def test_save_pretrained_round_trip(siglip_qwen, clip_llama, tmp_path):
    for (path, hfm), sub in ((siglip_qwen, "a"), (clip_llama, "b")):
        cfg, model = load_weights(path)[:2]
        out_dir = str(tmp_path / sub)
        mhf.save_pretrained(model, out_dir)
        back = transformers.LlavaForConditionalGeneration.from_pretrained(out_dir).eval()
        k = cfg.num_image_tokens
        tok = cfg.image_token_id
        ids = np.array([[1, 4] + [tok] * k + [9, 10, 11]])
        am = np.ones_like(ids)
        imgs = _images(1, 20)
        want, _ = _hf_run(hfm, ids, am, imgs)
        got, _ = _hf_run(back, ids, am, imgs)
        np.testing.assert_allclose(got, want, atol=TOL, rtol=0)


@pytest.mark.slow
@pytest.mark.parametrize("per_layer", [True, False], ids=["per_layer_cache", "stacked_cache"])
def test_greedy_generation_matches_hf(clip_llama, per_layer, monkeypatch):
    # Both decoding loops: one cache buffer a layer (CPU's) and the stacked cache under the
    # layer scan (accelerators').
    monkeypatch.setattr(sys.modules["mir_jax.models.generate"], "per_layer_cache", lambda: per_layer)
    path, hfm = clip_llama
    cfg, model = load_weights(path)[:2]
    k = cfg.num_image_tokens
    ids = np.array([[1, 5, 6] + [127] * k + [7, 8], [0, 0, 1, 5] + [127] * k + [9]])
    am = (ids != 0).astype(np.int64)
    imgs = _images(2, 30)
    with torch.no_grad():
        ref = hfm.generate(input_ids=torch.tensor(ids), attention_mask=torch.tensor(am),
                           pixel_values=torch.tensor(np.stack(imgs)).permute(0, 3, 1, 2),
                           max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    ref = ref[:, ids.shape[1]:].numpy()
    got = generate(model, ids, np.stack(imgs)[:, None], np.ones((2, 1), bool), am, max_new_tokens=10,
                   eos_token_id=-1)
    np.testing.assert_array_equal(got, ref)
    # EOS: stop at the first greedy token of row 0 -> row 0 pads afterwards.
    eos = int(ref[0, 0])
    got = generate(model, ids, np.stack(imgs)[:, None], np.ones((2, 1), bool), am, max_new_tokens=10,
                   eos_token_id=eos, pad_token_id=0)
    assert got[0, 0] == eos and np.all(got[0, 1:] == 0)
    stop = np.flatnonzero(ref[1] == eos)
    n1 = stop[0] + 1 if len(stop) else 10
    np.testing.assert_array_equal(got[1, :n1], ref[1, :n1])


def _write_safetensors(tensors, file):
    from safetensors.numpy import save_file

    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, file, metadata={"format": "pt"})


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_original_llava_layout_with_moca(clip_llama, tmp_path):
    """LlavaLlamaForCausalLM: model.* + model.mm_projector.{0,2}, tower from its own directory,
    identity MoCa tensors -> same logits as HF."""
    path, hfm = clip_llama
    sd = {k: v.numpy() for k, v in hfm.state_dict().items()}
    tower_dir = str(tmp_path / "tower")
    hfm.model.vision_tower.save_pretrained(tower_dir)
    ckpt = {}
    for k, v in sd.items():
        if k.startswith("model.language_model."):
            ckpt["model." + k[len("model.language_model."):]] = v
        elif k.startswith("model.multi_modal_projector.linear_"):
            j, rest = k[len("model.multi_modal_projector.linear_"):].split(".")
            ckpt[f"model.mm_projector.{2 * (int(j) - 1)}.{rest}"] = v
        elif k == "lm_head.weight":
            ckpt[k] = v
    d = hfm.config.text_config
    for i in range(d.num_hidden_layers):
        ckpt[f"model.layers.{i}.modality_layernorm.scale"] = np.ones(d.hidden_size, np.float32)
        ckpt[f"model.layers.{i}.modality_layernorm.shift"] = np.zeros(d.hidden_size, np.float32)
    orig = tmp_path / "orig"
    orig.mkdir()
    _write_safetensors(ckpt, str(orig / "model.safetensors"))
    config = {k: getattr(d, k) for k in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                                          "num_attention_heads", "num_key_value_heads", "rms_norm_eps")}
    config.update(architectures=["LlavaLlamaForCausalLM"], model_type="llava_llama", rope_theta=500.0,
                  mm_vision_tower="tower", mm_projector_type="mlp2x_gelu", mm_vision_select_layer=-2,
                  mm_vision_select_feature="patch", image_aspect_ratio="pad")
    (orig / "config.json").write_text(json.dumps(config))
    cfg, model = load_weights(str(orig), vision_tower_path=tower_dir)[:2]
    assert cfg.moca and cfg.image_token_id == mhf.IMAGE_TOKEN_INDEX_ORIGINAL
    k = cfg.num_image_tokens
    ids = np.array([[1, 5] + [127] * k + [7, 8, 9]])
    want, hidden = _hf_run(hfm, ids, np.ones_like(ids), _images(1, 40))
    ours_ids = np.where(ids == 127, mhf.IMAGE_TOKEN_INDEX_ORIGINAL, ids)
    out = model(jnp.asarray(ours_ids), jnp.asarray(np.stack(_images(1, 40)))[:, None],
                output_hidden_states=True)
    _compare(out, want, hidden, np.ones_like(ids))


@pytest.mark.slow  # 3 s or more on a quiet 2-core machine: out of the quick loop
def test_stage1_builder(clip_llama, tmp_path):
    path, hfm = clip_llama
    vdir, ldir = str(tmp_path / "vision"), str(tmp_path / "llm")
    hfm.model.vision_tower.save_pretrained(vdir)
    lm = transformers.LlamaForCausalLM(hfm.config.text_config).eval()
    lm.model.load_state_dict(hfm.model.language_model.state_dict())
    lm.lm_head.load_state_dict(hfm.lm_head.state_dict())
    lm.save_pretrained(ldir)
    cfg, model = mhf.build_stage1(vdir, ldir, connector={"name": "avgpool", "num_tokens": 4})
    assert cfg.image_token_id == 128 and cfg.text.vocab_size == 129 and cfg.num_image_tokens == 4
    ids = np.array([[1, 5, 6, 7, 8]])
    with torch.no_grad():
        want = lm(input_ids=torch.tensor(ids)).logits.numpy()
    got = np.asarray(model(jnp.asarray(ids)).logits)
    np.testing.assert_allclose(got[..., :128], want, atol=TOL, rtol=0)
    # The tower's layer -2 patch features are HF's.
    img = np.stack(_images(1, 50))
    with torch.no_grad():
        ref = hfm.model.vision_tower(torch.tensor(img).permute(0, 3, 1, 2), output_hidden_states=True)
    feats = model.vision_tower.hidden_states(jnp.asarray(img), (-2,))[0]
    np.testing.assert_allclose(np.asarray(feats), ref.hidden_states[-2].numpy(), atol=TOL, rtol=0)
    out = model(jnp.asarray([[1, 128, 128, 128, 128, 9]]), jnp.asarray(img)[:, None])
    assert np.isfinite(np.asarray(out.logits)).all()


def test_checkpoint_errors_name_the_problem(clip_llama, tmp_path):
    path, _ = clip_llama
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_weights(str(tmp_path / "nope"))
    refs = mhf.index_safetensors(path)
    tensors = {k: r.load() for k, r in refs.items()}
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text(open(os.path.join(path, "config.json")).read())
    _write_safetensors({**tensors, "language_model.model.extra.weight": np.zeros(3, np.float32)},
                       str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"language_model\.model\.extra\.weight.*model\.safetensors"):
        load_weights(str(bad))
    t2 = dict(tensors)
    t2["multi_modal_projector.linear_1.weight"] = np.zeros((5, 5), np.float32)
    _write_safetensors(t2, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"multi_modal_projector\.linear_1\.weight.*shape"):
        load_weights(str(bad))
    t3 = {k: v for k, v in tensors.items() if k != "language_model.model.norm.weight"}
    _write_safetensors(t3, str(bad / "model.safetensors"))
    with pytest.raises(ValueError, match=r"language_model\.norm\.scale"):
        load_weights(str(bad))


def test_preprocessing_and_tokenizer_from_checkpoint(tmp_path):
    proc = transformers.CLIPImageProcessor(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336},
                                           image_mean=[0.1, 0.2, 0.3], image_std=[0.4, 0.5, 0.6])
    proc.save_pretrained(str(tmp_path))
    from mir_jax.data import image_config_from_hf

    ip = image_config_from_hf(str(tmp_path), mode=None)  # the processor's own mode
    assert ip.mean == pytest.approx((0.1, 0.2, 0.3)) and ip.std == pytest.approx((0.4, 0.5, 0.6))
    # shortest edge 336 (= the crop: no separate shortest_edge), crop 336, centre crop:
    assert ip.shortest_edge is None and ip.size == 336 and ip.mode == "crop"
    from tokenizers import Tokenizer, models, pre_tokenizers

    tk = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1, "world": 2, "<image>": 3, "</s>": 4}, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", eos_token="</s>").save_pretrained(
        str(tmp_path))
    from mir_jax.data import load_tokenizer

    tok = load_tokenizer(str(tmp_path))  # the one loader: a directory -> HFTokenizer
    assert tok.tok("hello <image> world")["input_ids"] == [1, 3, 2] and tok.image_token_id == 3 and tok.eos_id == 4


@pytest.mark.slow
def test_evaluator_generation_matches_hf_prompt_by_prompt(clip_llama):
    """The evaluators' batched path (`evals.predict.generate_texts`: longest first, left-padded
    to 16-token buckets, the last batch filled with repeats, 8 sharded devices) gives, for 5
    prompts of 4 lengths, the tokens HF `generate` gives each prompt alone (no padding)."""
    import types

    from mir_jax.data.images import ImageConfig, normalize
    from mir_jax.evals import EvalModel
    from mir_jax.evals.predict import generate_texts
    from mir_jax.evals.prompts import Prompt
    from mir_jax.sharding import make_mesh

    path, hfm = clip_llama
    cfg, model = load_weights(path)[:2]
    k = cfg.num_image_tokens
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (IMG, IMG, 3), dtype=np.uint8) for _ in range(5)]
    lengths = [3, 20, 7, 20, 35]
    prompts = [Prompt(np.array([1] + [127] * k + list(rng.integers(4, 120, n)), np.int32), [im], "q")
               for n, im in zip(lengths, images)]
    tok = types.SimpleNamespace(pad_id=0, eos_id=-1, decode=lambda ids: " ".join(str(int(i)) for i in ids))
    image = ImageConfig(size=IMG, mode="resize")
    got = {}
    for mesh in (None, make_mesh((8, 1, 1))):
        handle = EvalModel("hf", model, tok, image, mesh=mesh)
        got[mesh is None] = generate_texts(handle, prompts, batch_size=8 if mesh else 2, max_new_tokens=6)
    assert got[True] == got[False]
    for p, im, text in zip(prompts, images, got[True]):
        px = normalize(im[None], image.mean, image.std)
        with torch.no_grad():
            ref = hfm.generate(input_ids=torch.tensor(p.ids[None]).long(),
                               pixel_values=torch.tensor(px).permute(0, 3, 1, 2), max_new_tokens=6,
                               do_sample=False, eos_token_id=None, pad_token_id=0)
        assert text == " ".join(str(int(t)) for t in ref[0, len(p.ids):]), (len(p.ids), text)
