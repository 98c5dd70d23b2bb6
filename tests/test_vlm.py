"""Visual-token reduction on tiny LLaVA-1.5 and Qwen2-VL: exactness, independent references, positions, batching."""

from __future__ import annotations

import pytest
import torch
from vlm_models import llava_inputs, qwen2vl_inputs, tiny_llava, tiny_qwen2vl

import tokenreduce
from tokenreduce.vlm import make_vlm_method, reduce
from tokenreduce.vlm.state import get_state

BEFORE = ["fastervlm", "visionzip", "visual-tome", "visual-random", "visual-pool"]
INSIDE = ["fastv", "pdrop", "text-guided"]
LLAVA_METHODS = BEFORE + INSIDE
QWEN_METHODS = BEFORE[2:] + INSIDE


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen2vl()


@pytest.fixture(scope="module")
def qwen25():
    """Qwen2.5-VL: windowed vision attention, same M-RoPE decoder."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    v = 97
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=v + 60, hidden_size=48, intermediate_size=96, num_hidden_layers=4,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=1, eos_token_id=2,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0}),
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=48, num_heads=4, intermediate_size=64,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=16,
                           fullatt_block_indexes=[1]),
        image_token_id=v + 1, video_token_id=v + 2, vision_start_token_id=v + 3, vision_end_token_id=v + 4,
    )
    torch.manual_seed(0)
    return Qwen2_5_VLForConditionalGeneration(cfg).eval()


def _family(name, llava, qwen, qwen25=None):
    if name == "llava":
        return llava, llava_inputs(llava, n_images=2)
    model = qwen25 if name == "qwen25" else qwen
    return model, qwen2vl_inputs(model, grids=((1, 8, 12), (1, 4, 4)))


@torch.no_grad()
@pytest.mark.parametrize(
    "family,method",
    [("llava", m) for m in LLAVA_METHODS] + [(f, m) for f in ("qwen", "qwen25") for m in QWEN_METHODS],
)
def test_keep_one_reproduces_logits_and_generation(family, method, llava, qwen, qwen25):
    model, x = _family(family, llava, qwen, qwen25)
    ref = model(**x).logits
    gen = model.generate(**x, max_new_tokens=4, do_sample=False)
    with tokenreduce.patched(model, method, keep=1.0):
        assert torch.equal(model(**x).logits, ref)
        assert torch.equal(model.generate(**x, max_new_tokens=4, do_sample=False), gen)


@torch.no_grad()
def test_unpatch_restores_model(llava):
    x = llava_inputs(llava)
    ref = llava(**x).logits
    before = {k: v.clone() for k, v in llava.state_dict().items()}
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in llava.modules()]
    tokenreduce.patch(llava, "fastv", keep=0.25)
    assert llava(**x).logits.shape[1] < ref.shape[1]
    tokenreduce.unpatch(llava)
    assert all(torch.equal(before[k], v) for k, v in llava.state_dict().items())
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in llava.modules()] == hooks
    assert torch.equal(llava(**x).logits, ref)


def _merged_embeddings(model, x):
    """Text embeddings with the image features scattered in, computed with the unpatched model's own API."""
    inner = model.model
    emb = inner.get_input_embeddings()(x["input_ids"])
    if "image_grid_thw" in x:
        feats = inner.get_image_features(x["pixel_values"], x["image_grid_thw"]).pooler_output
    else:
        cfg = model.config
        feats = inner.get_image_features(
            pixel_values=x["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        ).pooler_output
    emb = emb.clone()
    emb[x["input_ids"] == model.config.image_token_id] = torch.cat(list(feats))
    return emb


def _cls_attention_eager(model, x):
    """[CLS] attention of the feature layer from the vision tower's own eager attention weights."""
    tower = model.model.vision_tower
    out = tower(x["pixel_values"], output_attentions=True)
    layer = model.config.vision_feature_layer % (len(tower.encoder.layers) + 1) - 1
    return out.attentions[layer][:, :, 0, 1:].mean(1)


def mrope_reference(ids, image_token, grids):
    """3-D positions (3, N) written out by hand: text counts up; an image's (t, h, w) tokens sit at
    start + (t, row, col); the text after it resumes at start + max(t, rows, cols)."""
    pos, n, i, img = [], len(ids), 0, 0
    nxt = 0
    while i < n:
        if ids[i] == image_token:
            t, h, w = grids[img]
            for ti in range(t):
                for hi in range(h):
                    for wi in range(w):
                        pos.append((nxt + ti, nxt + hi, nxt + wi))
            nxt += max(t, h, w)
            i += t * h * w
            img += 1
        else:
            pos.append((nxt, nxt, nxt))
            nxt += 1
            i += 1
    return torch.tensor(pos).T


def _positions(model, x):
    """Reference positions of the full sequence: (1, N) for LLaVA, (3, 1, N) for Qwen2-VL."""
    ids = x["input_ids"][0]
    n = len(ids)
    if "image_grid_thw" not in x:
        return torch.arange(n)[None]
    m = model.config.vision_config.spatial_merge_size
    grids = [(t, h // m, w // m) for t, h, w in x["image_grid_thw"].tolist()]
    return mrope_reference(ids.tolist(), model.config.image_token_id, grids)[:, None]


@torch.no_grad()
def test_mrope_reference_matches_qwen2vl(qwen):
    x = qwen2vl_inputs(qwen, grids=((1, 8, 12), (1, 4, 4)))
    hf, _ = qwen.model.get_rope_index(x["input_ids"], x["mm_token_type_ids"], image_grid_thw=x["image_grid_thw"])
    assert torch.equal(hf, _positions(qwen, x))


def _store(d: dict, key: str, value) -> None:
    d.setdefault(key, value)


def _kept_of(model, x, method, keep):
    """Original indices each layer's cache holds after a patched prefill (and the prefill's last logits)."""
    with tokenreduce.patched(model, method, keep=keep):
        out = model(**x, use_cache=True)
    return get_state(out.cache).cols, out.logits[:, -1]


@torch.no_grad()
@pytest.mark.parametrize(
    "family,method", [("llava", m) for m in BEFORE] + [(f, m) for f in ("qwen", "qwen25") for m in BEFORE[2:]]
)
def test_before_methods_equal_unpatched_lm_on_reduced_input(family, method, llava, qwen, qwen25):
    """Patched prefill == the unpatched language model fed the reduced embeddings at the reference positions."""
    model, x = _family(family, llava, qwen, qwen25)
    x = {k: v[:1] if k != "pixel_values" and k != "image_grid_thw" else v for k, v in x.items()}
    cols, last = _kept_of(model, x, method, 0.3)
    kept = cols[0][0]
    assert all(torch.equal(c[0], kept) for c in cols)
    emb = _merged_embeddings(model, x)
    m = make_vlm_method(method, keep=0.3)
    # rebuild the reduced sequence image by image with the method's pure function
    is_img = (x["input_ids"][0] == model.config.image_token_id).nonzero().squeeze(1).tolist()
    grids = _grids(model, x)
    cls = _cls_attention_eager(tiny_llava(impl="eager"), x) if m.needs_cls else None
    parts, cursor, start = [], 0, is_img[0]
    seq = emb[0]
    idx_all = []
    for g_i, grid in enumerate(grids):
        n = grid[0] * grid[1]
        start = is_img[sum(a * b for a, b in grids[:g_i])]
        parts.append(seq[cursor:start])
        idx_all.append(torch.arange(cursor, start))
        loc, red = m.reduce(seq[start : start + n], grid, None if cls is None else cls[g_i], m.budget(n))
        parts.append(red)
        idx_all.append(loc + start)
        cursor = start + n
    parts.append(seq[cursor:])
    idx_all.append(torch.arange(cursor, len(seq)))
    idx = torch.cat(idx_all)
    assert torch.equal(idx, kept)
    pos = _positions(model, x)[..., idx]
    ref = model.model.language_model(inputs_embeds=torch.cat(parts)[None], position_ids=pos).last_hidden_state
    torch.testing.assert_close(model.lm_head(ref[:, -1]), last, rtol=1e-5, atol=1e-5)


def _grids(model, x):
    if "image_grid_thw" in x:
        m = model.config.vision_config.spatial_merge_size
        return [(t * h // m, w // m) for t, h, w in x["image_grid_thw"].tolist()]
    vc = model.config.vision_config
    g = vc.image_size // vc.patch_size
    return [(g, g)] * x["pixel_values"].shape[0]


@torch.no_grad()
@pytest.mark.parametrize("family,method", [(f, m) for f in ("llava", "qwen", "qwen25") for m in INSIDE])
def test_inside_methods_equal_masked_reference(family, method, llava, qwen, qwen25):
    """Dropping tokens between layers == running every layer on the full sequence with dropped tokens masked out."""
    model, x = _family(family, llava, qwen, qwen25)
    cols, last = _kept_of(model, x, method, 0.3)
    lm = model.model.language_model
    emb = _merged_embeddings(model, x)
    pos = _positions(model, x)
    n = emb.shape[1]
    cos, sin = lm.rotary_emb(emb, pos)
    h = emb
    causal = torch.ones(n, n, dtype=torch.bool).tril()
    for i, layer in enumerate(lm.layers):
        alive = torch.zeros(n, dtype=torch.bool)
        alive[cols[i][0]] = True
        allowed = causal & alive[None, :]
        allowed |= torch.eye(n, dtype=torch.bool)  # dropped rows attend to themselves (their outputs are unused)
        mask = torch.zeros(1, 1, n, n).masked_fill(~allowed, torch.finfo(torch.float32).min)
        h = layer(h, attention_mask=mask, position_embeddings=(cos, sin))
    ref = model.lm_head(lm.norm(h)[:, -1])
    assert cols[-1].shape[1] < n
    torch.testing.assert_close(ref, last, rtol=1e-4, atol=1e-5)


@torch.no_grad()
@pytest.mark.parametrize("family,method", [(f, m) for f in ("qwen", "qwen25") for m in ("visual-pool", "fastv")])
def test_qwen2vl_positions_after_pruning_match_reference(family, method, qwen, qwen25):
    """The rotary angles each kept token gets inside the patched model are those of its reference M-RoPE position."""
    qwen = qwen25 if family == "qwen25" else qwen
    x = qwen2vl_inputs(qwen, grids=((1, 8, 12),))
    seen = {}
    last_layer = qwen.model.language_model.layers[-1]
    h = last_layer.self_attn.register_forward_pre_hook(
        lambda mod, a, kw: _store(seen, "cos", kw["position_embeddings"][0]), with_kwargs=True
    )
    try:
        cols, _ = _kept_of(qwen, x, method, 0.25)
    finally:
        h.remove()
    lm = qwen.model.language_model
    pos = _positions(qwen, x)[..., cols[-1][0]]
    cos_ref, _ = lm.rotary_emb(torch.zeros(1, 1, 48), pos)
    assert seen["cos"].shape[1] == cols[-1].shape[1] < x["input_ids"].shape[1]
    torch.testing.assert_close(seen["cos"], cos_ref, rtol=0, atol=0)


@torch.no_grad()
@pytest.mark.parametrize("family", ["llava", "qwen", "qwen25"])
def test_generation_after_reduction_matches_reference_loop(family, llava, qwen, qwen25):
    """Patched model.generate == greedy decoding of the unpatched LM on the reduced prefix, positions continuing."""
    model, x = _family(family, llava, qwen, qwen25)
    with tokenreduce.patched(model, "visual-pool", keep=0.25):
        gen = model.generate(**x, max_new_tokens=5, do_sample=False)[0, x["input_ids"].shape[1] :]
    cols, _ = _kept_of(model, x, "visual-pool", 0.25)
    lm, n = model.model.language_model, x["input_ids"].shape[1]
    emb = _merged_embeddings(model, x)
    with tokenreduce.patched(model, "visual-pool", keep=0.25):  # reduced embeddings as the patched model built them
        red = {}
        hk = lm.layers[0].register_forward_pre_hook(lambda mod, a, kw: _store(red, "h", a[0]), with_kwargs=True)
        model(**x)
        hk.remove()
    assert red["h"].shape[1] == cols[0].shape[1]
    pos = _positions(model, x)
    out = lm(inputs_embeds=red["h"], position_ids=pos[..., cols[0][0]], use_cache=True)
    cache, toks = out.cache, []
    nxt = model.lm_head(out.last_hidden_state[:, -1]).argmax(-1)
    delta = int(pos.max()) + 1 - n
    for t in range(5):
        toks.append(int(nxt))
        p = torch.full((1, 1), n + t + delta)
        p = p.expand(3, 1, 1) if pos.ndim == 3 else p
        emb_t = model.model.get_input_embeddings()(nxt[:, None])
        out = lm(inputs_embeds=emb_t, position_ids=p, cache=cache, use_cache=True)
        cache = out.cache
        nxt = model.lm_head(out.last_hidden_state[:, -1]).argmax(-1)
    del emb
    assert gen.tolist() == toks


@torch.no_grad()
@pytest.mark.parametrize("method", ["fastervlm", "visual-tome", "fastv", "text-guided"])
def test_batch_with_left_padding_equals_single_rows(method, llava):
    rows = [llava_inputs(llava, prefix=p, seed=s) for p, s in ((3, 1), (7, 2))]
    n = max(r["input_ids"].shape[1] for r in rows)
    ids = torch.zeros(2, n, dtype=torch.long)
    mask = torch.zeros(2, n, dtype=torch.long)
    for i, r in enumerate(rows):
        L = r["input_ids"].shape[1]
        ids[i, n - L :], mask[i, n - L :] = r["input_ids"][0], 1
    batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat([r["pixel_values"] for r in rows])}
    with tokenreduce.patched(llava, method, keep=0.3):
        both = llava(**batch).logits[:, -1]
        singles = torch.cat([llava(**r).logits[:, -1] for r in rows])
        g_both = llava.generate(**batch, max_new_tokens=4, do_sample=False)[:, n:]
        g_single = [llava.generate(**r, max_new_tokens=4, do_sample=False)[0, r["input_ids"].shape[1] :] for r in rows]
    torch.testing.assert_close(both, singles, rtol=1e-4, atol=1e-5)
    assert g_both.tolist() == [g.tolist() for g in g_single]


def test_errors_are_clear(llava, qwen):
    with pytest.raises(ValueError, match="no \\[CLS\\]"):
        tokenreduce.patch(qwen, "fastervlm", keep=0.5)
    with pytest.raises(ValueError, match="keep must be in"):
        tokenreduce.patch(llava, "fastv", keep=1.5)
    with pytest.raises(ValueError, match="exactly one of"):
        tokenreduce.patch(llava, "fastv", keep=0.5, tokens=3)
    with pytest.raises(ValueError, match="pruning layers"):
        tokenreduce.patch(llava, "fastv", keep=0.5, layer=9)
    with pytest.raises(ValueError, match="unknown visual-token method"):
        tokenreduce.patch(llava, "tome", keep=0.5)
    assert tokenreduce.patch_info(llava) is None and tokenreduce.patch_info(qwen) is None
    x = llava_inputs(llava)
    emb = llava.model.get_input_embeddings()(x["input_ids"])
    with tokenreduce.patched(llava, "fastv", keep=0.5), pytest.raises(ValueError, match="needs input_ids"):
        llava(inputs_embeds=emb, pixel_values=x["pixel_values"])


def test_pool_matches_loop_reference():
    emb = torch.randn(6 * 8, 5, dtype=torch.float64)
    idx, out = reduce.pool(emb, (6, 8), 12)
    a, b = reduce.pool_shape(6, 8, 12)
    assert (a, b) == (3, 4) and out.shape == (12, 5)
    grid = emb.view(6, 8, 5)
    for i in range(a):
        for j in range(b):
            cell = grid[i * 2 : i * 2 + 2, j * 2 : j * 2 + 2].reshape(-1, 5).mean(0)
            torch.testing.assert_close(out[i * b + j], cell)
            assert int(idx[i * b + j]) == (i * 2) * 8 + j * 2


def test_merge_into_targets_matches_loop_reference():
    torch.manual_seed(0)
    emb, keys = torch.randn(10, 4, dtype=torch.float64), torch.randn(10, 3, dtype=torch.float64)
    kept, targets = torch.tensor([1, 7]), torch.tensor([0, 4, 9])
    idx, out = reduce.merge_into_targets(emb, keys, kept, targets)
    assert idx.tolist() == [0, 1, 4, 7, 9]
    groups = {int(t): [int(t)] for t in targets}
    kn = torch.nn.functional.normalize(keys, dim=-1)
    for s in range(10):
        if s in (1, 7, 0, 4, 9):
            continue
        best = max(targets.tolist(), key=lambda t: float(kn[s] @ kn[t]))
        groups[best].append(s)
    for t, pos in zip(targets.tolist(), (0, 2, 4)):
        torch.testing.assert_close(out[pos], emb[groups[t]].mean(0))
    torch.testing.assert_close(out[1], emb[1])


def test_bipartite_merge_keeps_mass_and_count():
    torch.manual_seed(0)
    emb = torch.randn(37, 6, dtype=torch.float64)
    for k in (36, 20, 9, 1):
        idx, out = reduce.bipartite_merge(emb, k)
        assert len(idx) == k and torch.all(idx[1:] > idx[:-1])
    idx, out = reduce.bipartite_merge(emb, 37)
    assert torch.equal(out, emb)


@torch.no_grad()
@pytest.mark.parametrize("family", ["llava", "qwen", "qwen25"])
def test_manual_decode_without_positions_continues_original_positions(family, llava, qwen, qwen25):
    """A hand-written decode step (no position ids, no mask) after a reduced prefill equals generate's next token."""
    model, x = _family(family, llava, qwen, qwen25)
    with tokenreduce.patched(model, "fastv", keep=0.25):
        gen = model.generate(**x, max_new_tokens=3, do_sample=False)[0, x["input_ids"].shape[1] :].tolist()
        out = model(**x, use_cache=True)
        toks = [int(out.logits[0, -1].argmax())]
        for _ in range(2):
            out = model(input_ids=torch.tensor([[toks[-1]]]), cache=out.cache, use_cache=True)
            toks.append(int(out.logits[0, -1].argmax()))
    assert toks == gen


@torch.no_grad()
@pytest.mark.parametrize("method", [None, *LLAVA_METHODS])
def test_prefill_macs_formula_equals_flop_counter(method, llava):
    """The analytic LLM MACs (per-layer token counts, scoring included) equal what PyTorch executes."""
    from tokenreduce.bench.flops import measured_flops
    from tokenreduce.vlm.flops import DecoderShape, prefill_macs

    x = llava_inputs(llava, n_images=2)
    cfg = llava.config
    vision = measured_flops(
        lambda: llava.model.get_image_features(
            pixel_values=x["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
    )
    if method is None:
        total = measured_flops(lambda: llava(**x, logits_to_keep=1))
    else:
        with tokenreduce.patched(llava, method, keep=0.3):
            total = measured_flops(lambda: llava(**x, logits_to_keep=1))
    m = None if method is None else make_vlm_method(method, keep=0.3)
    grids = _grids(llava, x)
    text_after = x["input_ids"].shape[1] - 1 - int((x["input_ids"][0] == cfg.image_token_id).nonzero().max())
    want = prefill_macs(DecoderShape.of(cfg.text_config), m, x["input_ids"].shape[1], grids, text_after,
                        vision_width=cfg.vision_config.hidden_size)
    assert (total - vision) // 2 == want


def test_bench_vlm_cli_on_a_tiny_llava(tmp_path, capsys, monkeypatch):
    """The CLI runs end to end (tiny LLaVA in place of the 7B-shaped one) and reports ratios against the baseline."""
    import json

    from tokenreduce.vlm import bench, cli

    monkeypatch.setattr(bench, "llava15_config", lambda llm, vis: tiny_llava(layers=llm).config)
    monkeypatch.setattr(cli, "llava15_config", lambda llm, vis: tiny_llava(layers=llm).config)
    out = tmp_path / "vlm.json"
    assert cli.main(["--llm-layers", "4", "--tokens", "16,8", "--methods", "fastervlm,fastv,visual-pool",
                     "--repeats", "1", "--steps", "2", "--no-progress", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows][:4] == ["unpruned", "fastervlm", "fastv", "visual-pool"]
    assert rows[0]["macs_ratio"] == 1.0 and all(r["macs_ratio"] < 1.0 for r in rows[1:])
    assert all(0 < r["kv_ratio"] < 1 for r in rows[1:])
    assert "llm7b_macs_ratio" in capsys.readouterr().out
    assert cli.main(["--methods", "nope", "--no-progress"]) == 2


@torch.no_grad()
def test_right_padding_is_refused_and_image_last_still_works(llava):
    x = llava_inputs(llava, question=0)
    x["input_ids"] = x["input_ids"][:, :-2]  # the image run is now the end of the prompt
    x["attention_mask"] = torch.ones_like(x["input_ids"])
    with tokenreduce.patched(llava, "text-guided", keep=0.5):
        assert llava(**x).logits.shape[1] == x["input_ids"].shape[1] - 32
        x["attention_mask"][0, -1] = 0
        with pytest.raises(ValueError, match="right-padded"):
            llava(**x)


@torch.no_grad()
@pytest.mark.parametrize("method", ["fastervlm", "visionzip"])
def test_beam_search_maps_cls_rows_to_repeated_images(method, llava):
    """Beam search repeats each row's image features but not the tower output; [CLS] rows must follow."""
    x = llava_inputs(llava, n_images=2)
    ref = llava.generate(**x, max_new_tokens=3, num_beams=2, do_sample=False)
    with tokenreduce.patched(llava, method, keep=1.0):
        assert torch.equal(llava.generate(**x, max_new_tokens=3, num_beams=2, do_sample=False), ref)
    seen: dict = {}
    with tokenreduce.patched(llava, method, keep=0.3):
        h = llava.model.language_model.layers[0].register_forward_pre_hook(
            lambda mod, a, kw: _store(seen, len(seen), a[0]), with_kwargs=True
        )
        try:
            llava(**x)  # one row, images encoded inside the forward
            llava.generate(**x, max_new_tokens=1, num_beams=2, do_sample=False)  # images encoded by generate
        finally:
            h.remove()
    single, beams = seen[0], seen[1]
    assert beams.shape[0] == 2 and beams.shape[1] == single.shape[1] < x["input_ids"].shape[1]
    torch.testing.assert_close(beams, single.expand_as(beams), rtol=1e-5, atol=1e-6)


def test_bench_vlm_cli_on_a_saved_checkpoint_with_its_processor(tmp_path, capsys):
    """--model PATH --image FILE: a checkpoint folder with its own processor runs unchanged (tiny, random)."""
    import json

    from PIL import Image
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaProcessor

    from tokenreduce.bench.encoder import default_model_path
    from tokenreduce.vlm import cli

    tok = AutoTokenizer.from_pretrained(default_model_path())
    tok.add_tokens(["<image>"], special_tokens=True)
    image_id = tok.convert_tokens_to_ids("<image>")
    model = tiny_llava()
    model.config.image_token_id = image_id
    model.resize_token_embeddings(len(tok))
    size = model.config.vision_config.image_size
    image_proc = CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})
    proc = LlavaProcessor(
        image_processor=image_proc, tokenizer=tok, patch_size=model.config.vision_config.patch_size,
        vision_feature_select_strategy="default", image_token="<image>", num_additional_image_tokens=1,
    )
    model.save_pretrained(tmp_path / "ckpt")
    proc.save_pretrained(tmp_path / "ckpt")
    Image.fromarray((torch.rand(40, 56, 3) * 255).byte().numpy()).save(tmp_path / "img.png")
    out = tmp_path / "rows.json"
    args = ["--model", str(tmp_path / "ckpt"), "--image", str(tmp_path / "img.png"), "--prompt", "what is shown?",
            "--tokens", "16", "--methods", "fastervlm,fastv", "--repeats", "1", "--steps", "2", "--no-progress",
            "--json", str(out)]
    assert cli.main(args) == 0
    assert "(64 visual)" in capsys.readouterr().out
    rows = json.loads(out.read_text())["rows"]
    assert [r["method"] for r in rows] == ["unpruned", "fastervlm", "fastv"] and rows[1]["kv_ratio"] < 1
    assert cli.main(["--image", str(tmp_path / "img.png"), "--no-progress"]) == 2


@torch.no_grad()
@pytest.mark.parametrize("method", ["fastervlm", "fastv", "text-guided"])
def test_eager_and_sdpa_attention_agree(method, llava):
    """Scores are rebuilt from q/k, so the attention backend does not change what is kept."""
    eager = tiny_llava(impl="eager")
    x = llava_inputs(llava, n_images=2)
    outs = []
    for model in (eager, llava):
        with tokenreduce.patched(model, method, keep=0.3):
            outs.append((model(**x).logits[:, -1], model.generate(**x, max_new_tokens=4, do_sample=False)))
    torch.testing.assert_close(outs[0][0], outs[1][0], rtol=1e-5, atol=1e-5)
    assert torch.equal(outs[0][1], outs[1][1])
