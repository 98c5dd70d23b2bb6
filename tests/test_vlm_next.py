"""Visual-token reduction on a tiny LLaVA-NeXT (AnyRes crops): layouts vs the model's own packing, exactness,
per-crop budgets, newline tokens, thumbnail guidance, and independent references for the reduced prefill."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import pytest
import torch
from vlm_models import IMAGE_TOKEN, llava_next_inputs, next_num_tokens, tiny_llava_next

import tokenreduce
from tokenreduce.vlm import make_vlm_method, reduce
from tokenreduce.vlm.families import find_vlm, llava_next
from tokenreduce.vlm.methods import FasterVLM, VisionZip
from tokenreduce.vlm.state import get_state

BEFORE = ["fastervlm", "visionzip", "visual-tome", "visual-random", "visual-pool"]
INSIDE = ["fastv", "pdrop", "text-guided"]
# (30, 60): 1x2 crops, no unpadding; (50, 20): 3x1 crops, a row cut top and bottom; (40, 28): 2x2, columns cut
SIZES = ((30, 60), (50, 20), (40, 28))


GuidedFasterVLM = functools.partial(FasterVLM, thumbnail_guidance=True)
GuidedVisionZip = functools.partial(VisionZip, thumbnail_guidance=True)


@pytest.fixture(scope="module")
def model():
    return tiny_llava_next()


@pytest.fixture(scope="module")
def inputs(model):
    return llava_next_inputs(model, sizes=SIZES)


def _packed_ids(model, image_sizes):
    """Per image: (global crop index, patch index) of every run position, -1 for newlines, from the model's own
    pack_image_features run on a 2-channel "feature" (the reference the layouts must agree with)."""
    cfg = model.config
    g = cfg.vision_config.image_size // cfg.vision_config.patch_size
    crops = [next_num_tokens(cfg, h, w)[1] for h, w in image_sizes.tolist()]
    feats, off = [], 0
    for p in crops:
        f = torch.empty(p, g * g, 2, dtype=torch.float64)
        f[..., 0] = torch.arange(off, off + p)[:, None]
        f[..., 1] = torch.arange(g * g)[None]
        feats.append(f)
        off += p
    nl = torch.tensor([-1.0, -1.0], dtype=torch.float64)
    packed, _ = model.model.pack_image_features(feats, image_sizes, "default", image_newline=nl)
    return [p.long() for p in packed]


_RANDOM_SIZES = tuple(map(tuple, torch.randint(4, 120, (40, 2), generator=torch.Generator().manual_seed(0)).tolist()))


@pytest.mark.parametrize(
    "sizes", [SIZES, ((15, 47), (47, 15), (16, 16)), ((9, 40), (33, 31), (64, 20), (100, 7)), _RANDOM_SIZES]
)
def test_layout_matches_model_packing(model, sizes):
    sizes = torch.tensor(sizes)
    lays = llava_next.layouts_from_sizes(find_vlm(model), sizes)
    for lay, ref in zip(lays, _packed_ids(model, sizes), strict=True):
        crop = torch.where(lay.crop >= 0, lay.crop + lay.offset, -1)
        assert torch.equal(crop, ref[:, 0]) and torch.equal(lay.patch, ref[:, 1])
        assert lay.grid == (1, len(ref))
        for c, _pos, grid in _ref_crops(ref, _g(model)):  # each crop's tokens fill a (rows, cols) block
            assert lay.crop_grid(c - lay.offset) == grid


@torch.no_grad()
@pytest.mark.parametrize("sizes", [((15, 47), (100, 7), (47, 15), (16, 16), (50, 20)), _RANDOM_SIZES])
def test_layouts_inferred_from_generate_features_match_sizes(model, sizes):
    """generate() hands the prefill packed features without image_sizes; the inferred layouts are the same.
    (100, 7) keeps no high-res token at all; (16, 16) unpads to a grid four crop tilings could give."""
    x = llava_next_inputs(model, sizes=sizes)
    feats = model.model.get_image_features(
        pixel_values=x["pixel_values"], image_sizes=x["image_sizes"], return_dict=True,
        vision_feature_layer=model.config.vision_feature_layer, vision_feature_select_strategy="default",
    )
    parts = find_vlm(model)
    got = llava_next.layouts_from_features(parts, {}, feats)
    # the 16x16 image unpads to 4x4 tokens, which 1x2, 2x1, 1x3 and 3x1 crops (cut evenly) all give:
    # only the check against the vision tower's features tells them apart
    assert len(llava_next._candidates(4, 4, 16, 4, model.config.image_grid_pinpoints, 0)) == 4
    want = llava_next.layouts_from_sizes(parts, x["image_sizes"])
    for a, b in zip(got, want, strict=True):
        assert (a.tiles, a.window, a.offset) == (b.tiles, b.window, b.offset)
        assert torch.equal(a.crop, b.crop) and torch.equal(a.patch, b.patch)


@torch.no_grad()
def test_layouts_follow_beam_search_expansion(model, inputs):
    """Beam search repeats each sample's packed features ([A, B] -> [A, B, A, B]) but not the tower's output:
    the repeats must point at the same vision-batch crops; end to end, keep=1.0 beams are unchanged."""
    feats = model.model.get_image_features(
        pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"], return_dict=True,
        vision_feature_layer=model.config.vision_feature_layer, vision_feature_select_strategy="default",
    )
    feats.pooler_output = list(feats.pooler_output) * 2
    parts = find_vlm(model)
    got = llava_next.layouts_from_features(parts, {}, feats)
    want = llava_next.layouts_from_sizes(parts, inputs["image_sizes"]) * 2
    assert [(a.tiles, a.window, a.offset) for a in got] == [(b.tiles, b.window, b.offset) for b in want]
    ref = model.generate(**inputs, max_new_tokens=3, num_beams=2, do_sample=False)
    with tokenreduce.patched(model, "fastervlm", keep=1.0):
        assert torch.equal(model.generate(**inputs, max_new_tokens=3, num_beams=2, do_sample=False), ref)


@torch.no_grad()
@pytest.mark.parametrize("method", BEFORE + INSIDE)
def test_keep_one_reproduces_logits_and_generation(method, model, inputs):
    ref = model(**inputs).logits
    gen = model.generate(**inputs, max_new_tokens=4, do_sample=False)
    with tokenreduce.patched(model, method, keep=1.0):
        assert torch.equal(model(**inputs).logits, ref)
        assert torch.equal(model.generate(**inputs, max_new_tokens=4, do_sample=False), gen)


def _kept_of(model, x, method, **params):
    with tokenreduce.patched(model, method, **params):
        out = model(**x, use_cache=True)
    return get_state(out.cache).cols, out.logits[:, -1]


def _runs(x):
    """Start of every image's placeholder run in row 0."""
    is_img = (x["input_ids"][0] == IMAGE_TOKEN).long()
    return (torch.diff(is_img, prepend=torch.zeros(1, dtype=torch.long)) == 1).nonzero().squeeze(1).tolist()


def _ref_crops(ref, g):
    """(global crop id, run positions, token grid) of every crop in a pack-id reference, base first."""
    nl = (ref[:, 0] < 0).nonzero().squeeze(1)
    width = int(nl[0]) - g * g + 1  # packed row length including its newline
    out = []
    for j, c in enumerate(ref[:, 0].unique()[1:].tolist()):  # ascending global crop ids: base, then crops
        pos = (ref[:, 0] == c).nonzero().squeeze(1)
        rows = g if j == 0 else len(set(((pos - g * g) // width).tolist()))
        out.append((c, pos, (rows, len(pos) // rows)))
    return out


def _g(model):
    return model.config.vision_config.image_size // model.config.vision_config.patch_size


def _per_crop_counts(kept, x, refs):
    """Kept tokens per (image, crop) and per image's newlines, from original indices ``kept``."""
    alive = torch.zeros(x["input_ids"].shape[1], dtype=torch.bool)
    alive[kept] = True
    out = []
    for start, ref in zip(_runs(x), refs, strict=True):
        a = alive[start : start + len(ref)]
        crops = {int(c): (int(a[ref[:, 0] == c].sum()), int((ref[:, 0] == c).sum())) for c in ref[:, 0].unique()}
        out.append(crops)
    return out


@torch.no_grad()
@pytest.mark.parametrize("method", BEFORE + INSIDE)
def test_per_crop_budgets_and_newlines_kept(method, model, inputs):
    cols, _ = _kept_of(model, inputs, method, keep=0.3)
    m = make_vlm_method(method, keep=0.3)
    refs = _packed_ids(model, inputs["image_sizes"])
    depth = len(model.model.language_model.layers)
    assert cols[-1].shape[1] < inputs["input_ids"].shape[1]
    grids = {c: grid for ref in refs for c, _pos, grid in _ref_crops(ref, _g(model))}
    for crops in _per_crop_counts(cols[-1][0], inputs, refs):
        kept_nl, n_nl = crops.pop(-1)
        assert kept_nl == n_nl > 0  # every newline token stays
        for c, (kept, n) in crops.items():
            if method == "visual-pool":  # pooling keeps the largest grid within the budget
                a, b = reduce.pool_shape(*grids[c], m.budget(n))
                assert kept == a * b <= m.budget(n)
            elif method in INSIDE:
                assert kept == min(n, m.counts(n, depth)[-1])
            else:
                assert kept == m.budget(n)
    if method in INSIDE:  # every stage (PyramidDrop has three) holds its per-crop count from that layer on
        for s, layer in enumerate(m.stages(depth)):
            for crops in _per_crop_counts(cols[layer][0], inputs, refs):
                kept_nl, n_nl = crops.pop(-1)
                assert kept_nl == n_nl
                assert all(kept == min(n, m.counts(n, depth)[s]) for kept, n in crops.values())


@torch.no_grad()
def test_tokens_budget_is_per_crop(model, inputs):
    cols, _ = _kept_of(model, inputs, "fastervlm", tokens=3)
    for crops in _per_crop_counts(cols[0][0], inputs, _packed_ids(model, inputs["image_sizes"])):
        assert crops.pop(-1)[0] > 0
        assert all(kept == min(3, n) for kept, n in crops.values())


def _merged_embeddings(model, x):
    inner = model.model
    emb = inner.get_input_embeddings()(x["input_ids"]).clone()
    feats = inner.get_image_features(
        pixel_values=x["pixel_values"], image_sizes=x["image_sizes"], return_dict=True,
        vision_feature_layer=model.config.vision_feature_layer, vision_feature_select_strategy="default",
    ).pooler_output
    emb[x["input_ids"] == model.config.image_token_id] = torch.cat(list(feats))
    return emb


@functools.cache
def _eager():
    return tiny_llava_next(impl="eager")


def _cls_attention_eager(x):
    """[CLS] attention of the feature layer over every crop of every image, from the eager tower's weights."""
    eager = _eager()
    crops = [next_num_tokens(eager.config, h, w)[1] for h, w in x["image_sizes"].tolist()]
    pixels = torch.cat([p[:c] for p, c in zip(x["pixel_values"], crops, strict=True)])
    tower = eager.model.vision_tower
    out = tower(pixels, output_attentions=True)
    layer = eager.config.vision_feature_layer % (len(tower.encoder.layers) + 1) - 1
    return out.attentions[layer][:, :, 0, 1:].mean(1)


def _reference_reduction(model, x, m, refs, cls, budgets=None):
    """The reduced sequence (original indices, embeddings) rebuilt crop by crop from the pack-id reference."""
    seq, n = _merged_embeddings(model, x)[0], x["input_ids"].shape[1]
    idx, emb, cursor = [], [], 0
    for i, (start, ref) in enumerate(zip(_runs(x), refs, strict=True)):
        idx.append(torch.arange(cursor, start))
        emb.append(seq[cursor:start])
        run = seq[start : start + len(ref)]
        nl = (ref[:, 0] < 0).nonzero().squeeze(1)
        pos_l, emb_l = [nl], [run[nl]]
        for j, (c, pos, grid) in enumerate(_ref_crops(ref, _g(model))):
            k = m.budget(len(pos)) if budgets is None else budgets[i][j]
            if k >= len(pos):
                loc, red = torch.arange(len(pos)), run[pos]
            elif k == 0:
                continue
            else:
                cc = None if cls is None else cls[c, ref[pos, 1]]
                loc, red = m.reduce(run[pos], grid, cc, k)
            pos_l.append(pos[loc])
            emb_l.append(red)
        p, e = torch.cat(pos_l), torch.cat(emb_l)
        order = torch.argsort(p)
        idx.append(p[order] + start)
        emb.append(e[order])
        cursor = start + len(ref)
    idx.append(torch.arange(cursor, n))
    emb.append(seq[cursor:])
    return torch.cat(idx), torch.cat(emb)


@torch.no_grad()
@pytest.mark.parametrize("method", BEFORE)
def test_before_methods_equal_unpatched_lm_on_reduced_input(method, model, inputs):
    """Patched prefill == the unpatched LM fed the crop-by-crop reduced embeddings at their original positions."""
    cols, last = _kept_of(model, inputs, method, keep=0.3)
    kept = cols[0][0]
    assert all(torch.equal(c[0], kept) for c in cols)
    m = make_vlm_method(method, keep=0.3)
    refs = _packed_ids(model, inputs["image_sizes"])
    cls = _cls_attention_eager(inputs) if m.needs_cls else None
    idx, emb = _reference_reduction(model, inputs, m, refs, cls)
    assert torch.equal(idx, kept)
    ref = model.model.language_model(inputs_embeds=emb[None], position_ids=idx[None]).last_hidden_state
    torch.testing.assert_close(model.lm_head(ref[:, -1]), last, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("method", INSIDE)
def test_inside_methods_equal_masked_reference(method, model, inputs):
    """Dropping tokens between layers == every layer on the full sequence with the dropped tokens masked out."""
    cols, last = _kept_of(model, inputs, method, keep=0.3)
    lm = model.model.language_model
    emb = _merged_embeddings(model, inputs)
    n = emb.shape[1]
    cos, sin = lm.rotary_emb(emb, torch.arange(n)[None])
    h, causal = emb, torch.ones(n, n, dtype=torch.bool).tril()
    for i, layer in enumerate(lm.layers):
        alive = torch.zeros(n, dtype=torch.bool)
        alive[cols[i][0]] = True
        allowed = (causal & alive[None, :]) | torch.eye(n, dtype=torch.bool)
        mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
        h = layer(h, attention_mask=mask, position_embeddings=(cos, sin))
    assert cols[-1].shape[1] < n
    torch.testing.assert_close(model.lm_head(lm.norm(h)[:, -1]), last, rtol=1e-4, atol=1e-5)


def _thumbnail_mass_reference(cls_thumb, lay, k):
    """Mass of crop k's region on a fine grid: each thumbnail cell split into h x w equal sub-cells."""
    g = lay.g
    h, w = lay.window[1] - lay.window[0], lay.window[3] - lay.window[2]
    fine = cls_thumb.double().view(g, g).repeat_interleave(h, 0).repeat_interleave(w, 1) / (h * w)
    (r0, r1), (c0, c1) = lay.crop_span(k)
    return fine[r0 * g : r1 * g, c0 * g : c1 * g].sum()


def test_allot_is_proportional_capped_and_exact():
    w = torch.tensor([5.0, 1.0, 1.0, 3.0])
    assert llava_next.allot(w, [10, 10, 10, 10], 10) == [5, 1, 1, 3]
    # 5/10 of 10 is over the cap 2; the other 8 go 1:1:3 -> 1.6, 1.6, 4.8 -> floors 1, 1, 4 and the two
    # leftover tokens to the largest remainders (.8, then .6 at the lower index)
    assert llava_next.allot(w, [2, 10, 10, 10], 10) == [2, 2, 1, 5]
    assert llava_next.allot(w, [1, 1, 1, 1], 10) == [1, 1, 1, 1]
    assert sum(llava_next.allot(torch.rand(7), [3, 9, 4, 4, 8, 1, 6], 13)) == 13
    assert llava_next.allot(torch.tensor([1.0, 1.0, 1.0]), [5, 5, 5], 4) == [2, 1, 1]  # ties: lower index first


@torch.no_grad()
@pytest.mark.parametrize("cls_method", [GuidedFasterVLM, GuidedVisionZip])
def test_thumbnail_guidance_budgets_follow_thumbnail_attention(cls_method, model, inputs):
    m = cls_method(keep=0.3)
    cols, last = _kept_of(model, inputs, m)
    refs = _packed_ids(model, inputs["image_sizes"])
    cls = _cls_attention_eager(inputs)
    lays = llava_next.layouts_from_sizes(find_vlm(model), inputs["image_sizes"])
    budgets = []
    for lay in lays:
        sizes = [int((lay.crop == k).sum()) for k in range(lay.crops)]
        mass = torch.stack([_thumbnail_mass_reference(cls[lay.offset], lay, k) for k in range(1, lay.crops)])
        torch.testing.assert_close(mass, llava_next.thumbnail_mass(lay, cls[lay.offset]), rtol=1e-3, atol=1e-6)
        total = sum(m.budget(n) for n in sizes[1:])
        share = llava_next.allot(mass, sizes[1:], total)
        assert sum(share) == total and share != [m.budget(n) for n in sizes[1:]]
        budgets.append([m.budget(sizes[0]), *share])
    idx, emb = _reference_reduction(model, inputs, m, refs, cls, budgets)
    assert torch.equal(idx, cols[0][0])
    ref = model.model.language_model(inputs_embeds=emb[None], position_ids=idx[None]).last_hidden_state
    torch.testing.assert_close(model.lm_head(ref[:, -1]), last, rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("method", ["fastervlm", "visual-tome", "fastv", "guided"])
def test_generate_after_reduction_matches_manual_decode(method, model, inputs):
    """generate (layouts inferred from features) == a manual prefill with image_sizes and cached decode steps,
    compared on every step's logits (the tiny random model's greedy tokens alone say little)."""
    m = GuidedFasterVLM(keep=0.3) if method == "guided" else make_vlm_method(method, keep=0.3)
    with tokenreduce.patched(model, m):
        gen = model.generate(**inputs, max_new_tokens=3, do_sample=False, output_logits=True,
                             return_dict_in_generate=True)
        out = model(**inputs, use_cache=True)
        logits = [out.logits[:, -1]]
        for t in gen.sequences[0, inputs["input_ids"].shape[1] : -1].tolist():
            out = model(input_ids=torch.tensor([[t]]), cache=out.cache, use_cache=True)
            logits.append(out.logits[:, -1])
    torch.testing.assert_close(torch.stack(logits), torch.stack(gen.logits), rtol=1e-5, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("method", ["fastervlm", "fastv"])
def test_batch_with_left_padding_equals_single_rows(method, model):
    rows = [llava_next_inputs(model, sizes=((50, 20),), prefix=p, seed=s) for p, s in ((3, 1), (7, 2))]
    n = max(r["input_ids"].shape[1] for r in rows)
    ids, mask = torch.zeros(2, n, dtype=torch.long), torch.zeros(2, n, dtype=torch.long)
    for i, r in enumerate(rows):
        L = r["input_ids"].shape[1]
        ids[i, n - L :], mask[i, n - L :] = r["input_ids"][0], 1
    batch = {"input_ids": ids, "attention_mask": mask, "image_sizes": torch.cat([r["image_sizes"] for r in rows]),
             "pixel_values": torch.cat([r["pixel_values"] for r in rows])}
    with tokenreduce.patched(model, method, keep=0.3):
        both = model(**batch).logits[:, -1]
        singles = torch.cat([model(**r).logits[:, -1] for r in rows])
        g_both = model.generate(**batch, max_new_tokens=3, do_sample=False)[:, n:]
        g_single = [model.generate(**r, max_new_tokens=3, do_sample=False)[0, r["input_ids"].shape[1] :] for r in rows]
    torch.testing.assert_close(both, singles, rtol=1e-4, atol=1e-5)
    assert g_both.tolist() == [g.tolist() for g in g_single]


def test_errors_are_clear(model, inputs):
    from vlm_models import tiny_llava

    with pytest.raises(ValueError, match="thumbnail_guidance needs"):
        tokenreduce.patch(tiny_llava(), GuidedFasterVLM(keep=0.5))

    @dataclass(frozen=True)
    class GuidedPool(type(make_vlm_method("visual-pool", keep=0.5))):
        thumbnail_guidance: bool = True

    with pytest.raises(ValueError, match="thumbnail_guidance needs"):
        tokenreduce.patch(model, GuidedPool(keep=0.5))
    assert tokenreduce.patch_info(model) is None
    full = tiny_llava_next()
    full.config.vision_feature_select_strategy = "full"
    with tokenreduce.patched(full, "visual-pool", keep=0.5), pytest.raises(ValueError, match="'full'"):
        full(**inputs)
    x = {k: v for k, v in inputs.items() if k != "image_sizes"}
    with tokenreduce.patched(model, "fastervlm", keep=0.5), pytest.raises(ValueError, match="image_sizes"):
        model(**x)


def test_thumbnail_guidance_is_a_keyword_of_cls_methods_only(model):
    with tokenreduce.patched(model, "fastervlm", keep=0.25, thumbnail_guidance=True):
        assert tokenreduce.patch_info(model).method.thumbnail_guidance
    with pytest.raises(TypeError, match="unknown parameter"):
        tokenreduce.patch(model, "visual-pool", keep=0.25, thumbnail_guidance=True)
    assert tokenreduce.patch_info(model) is None
