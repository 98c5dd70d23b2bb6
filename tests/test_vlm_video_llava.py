"""Video-token reduction on tiny LLaVA-NeXT-Video and LLaVA-OneVision (frames of a fixed pooled grid, 1-D
positions; OneVision's trailing newline kept): exactness, an independent reference, batching, refusals."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaNextVideoConfig,
    LlavaNextVideoForConditionalGeneration,
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    Qwen2Config,
    SiglipVisionConfig,
)

import tokenreduce
from tokenreduce.vlm import find_vlm, make_vlm_method
from tokenreduce.vlm.state import get_state
from tokenreduce.vlm.video import VIDEO_METHODS

V = 97
FRAMES, PER_FRAME = 6, 16  # 16x16 frames, 2x2 patches -> 8x8, pooled to 4x4


def _text(cls):
    return cls(vocab_size=V + 10, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
               num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0)


def _peaked(model):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
    return model.eval()


def tiny_next_video():
    vis = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=16, patch_size=2, projection_dim=32)
    cfg = LlavaNextVideoConfig(vision_config=vis, text_config=_text(LlamaConfig), image_token_id=V + 1,
                               video_token_id=V + 2, spatial_pool_stride=2, image_grid_pinpoints=[[16, 32]])
    torch.manual_seed(0)
    return _peaked(LlavaNextVideoForConditionalGeneration(cfg))


def tiny_onevision():
    vis = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             image_size=16, patch_size=2)
    cfg = LlavaOnevisionConfig(vision_config=vis, text_config=_text(Qwen2Config), image_token_id=V + 1,
                               video_token_id=V + 2, vision_feature_layer=-1, image_grid_pinpoints=[[16, 32]])
    torch.manual_seed(0)
    return _peaked(LlavaOnevisionForConditionalGeneration(cfg))


@pytest.fixture(scope="module")
def models():
    return {"llava-next-video": tiny_next_video(), "llava-onevision": tiny_onevision()}


def inputs(model, prefix: int = 3, question: int = 6, seed: int = 1, static: float = 0.0):
    trailing = 1 if find_vlm(model).name == "llava-onevision" else 0
    g = torch.Generator().manual_seed(seed)
    ids = torch.cat([torch.randint(1, 80, (prefix,), generator=g), torch.full((FRAMES * PER_FRAME + trailing,), V + 2),
                     torch.randint(1, 80, (question,), generator=g)])[None]
    px = torch.randn(1, FRAMES, 3, 16, 16, generator=g)
    if static:
        px = px[:, :1] + static * px
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values_videos": px}


FAMILIES = ["llava-next-video", "llava-onevision"]


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", VIDEO_METHODS)
def test_keep_one_reproduces_logits_and_generation(family, method, models):
    model = models[family]
    x = inputs(model)
    ref = model(**x).logits
    gen = model.generate(**x, max_new_tokens=4, do_sample=False)
    with tokenreduce.patched(model, method, keep=1.0):
        assert torch.equal(model(**x).logits, ref)
        assert torch.equal(model.generate(**x, max_new_tokens=4, do_sample=False), gen)


def _store(d, key, value):
    d.setdefault(key, value)


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", VIDEO_METHODS)
def test_reduced_prefill_equals_unpatched_lm_at_original_positions(family, method, models):
    model = models[family]
    x = inputs(model, static=0.3)
    lm, seen = model.model.language_model, {}
    with tokenreduce.patched(model, method, keep=0.3):
        h = lm.layers[0].register_forward_pre_hook(
            lambda mod, a, kw: _store(seen, "h", a[0] if a else kw["hidden_states"]), with_kwargs=True)
        try:
            out = model(**x, use_cache=True)
        finally:
            h.remove()
        gen = model.generate(**x, max_new_tokens=3, do_sample=False)[0, -3:].tolist()
    cols = get_state(out.cache).cols[0]
    ids = x["input_ids"][0]
    vis = ids == V + 2
    kept_vis = int(vis[cols[0]].sum())
    trailing = 1 if family == "llava-onevision" else 0
    assert kept_vis == make_vlm_method(method, keep=0.3).kept_video(FRAMES, (4, 4)) + trailing
    if trailing:  # the newline after the video stays
        assert int(vis.nonzero().max()) in cols[0].tolist()
    ref = lm(inputs_embeds=seen["h"], position_ids=cols, use_cache=True)
    torch.testing.assert_close(out.logits, model.lm_head(ref.last_hidden_state), rtol=1e-5, atol=1e-5)
    cache, toks, n = ref.cache, [], len(ids)
    nxt = model.lm_head(ref.last_hidden_state[:, -1]).argmax(-1)
    for t in range(3):  # greedy continuation at the unreduced positions
        toks.append(int(nxt))
        o = lm(inputs_embeds=model.model.get_input_embeddings()(nxt[:, None]), position_ids=torch.tensor([[n + t]]),
               cache=cache, use_cache=True)
        cache, nxt = o.cache, model.lm_head(o.last_hidden_state[:, -1]).argmax(-1)
    assert toks == gen


@torch.no_grad()
@pytest.mark.parametrize("family", FAMILIES)
def test_left_padded_batch_equals_single_rows(family, models):
    model = models[family]
    rows = [inputs(model, prefix=p, seed=s, static=st) for p, s, st in ((3, 1, 0.3), (7, 2, 0.0))]
    n = max(r["input_ids"].shape[1] for r in rows)
    ids, mask = torch.zeros(2, n, dtype=torch.long), torch.zeros(2, n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, n - r["input_ids"].shape[1] :], mask[i, n - r["input_ids"].shape[1] :] = r["input_ids"][0], 1
    batch = {"input_ids": ids, "attention_mask": mask,
             "pixel_values_videos": torch.cat([r["pixel_values_videos"] for r in rows])}
    for method in ("dycoke", "fastvid", "holitom"):
        with tokenreduce.patched(model, method, keep=0.3):
            both = model(**batch).logits[:, -1]
            singles = torch.cat([model(**r).logits[:, -1] for r in rows])
        torch.testing.assert_close(both, singles, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family", FAMILIES)
def test_image_methods_are_refused(family, models):
    with pytest.raises(ValueError, match="only video methods"):
        tokenreduce.patch(models[family], "visual-pool", keep=0.5)
    assert tokenreduce.patch_info(models[family]) is None
