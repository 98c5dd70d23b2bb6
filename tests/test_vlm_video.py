"""Video-token reduction on tiny Qwen2-VL / Qwen2.5-VL: exactness, M-RoPE positions, independent references,
budgets, batching, cost, bad parameters."""

from __future__ import annotations

import pytest
import torch
from vlm_models import VOCAB, llava_inputs, tiny_llava, tiny_qwen2vl

import tokenreduce
from tokenreduce.vlm import make_vlm_method
from tokenreduce.vlm.state import get_state
from tokenreduce.vlm.video import VIDEO_METHODS

VIDEO = (6, 8, 8)  # (t, h, w) in patches: 6 frames of 4 x 4 LLM tokens after the 2 x 2 merger


def tiny_qwen25(seed: int = 0, layers: int = 4):
    """Qwen2.5-VL: windowed vision tower, M-RoPE whose time axis is spaced by tokens_per_second."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    v = VOCAB
    cfg = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=v + 60, hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
                         num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=1024,
                         bos_token_id=1, eos_token_id=2,
                         rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0}),
        vision_config=dict(depth=2, hidden_size=32, out_hidden_size=48, num_heads=4, intermediate_size=64,
                           patch_size=4, spatial_merge_size=2, temporal_patch_size=2, in_channels=3, window_size=16,
                           fullatt_block_indexes=[1], tokens_per_second=2),
        image_token_id=v + 1, video_token_id=v + 2, vision_start_token_id=v + 3, vision_end_token_id=v + 4,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(4.0)
    return model


def video_inputs(model, videos=(VIDEO,), images=(), prefix: int = 3, question: int = 6, seed: int = 1,
                 static: float = 0.0):
    """One row: text, <vision_start> image tokens <vision_end> per image, then each video the same way, then the
    question. ``static`` > 0 repeats frame 0's patches into later frames (plus that much noise), so temporal
    methods find redundancy."""
    cfg, vc = model.config, model.config.vision_config
    m2 = vc.spatial_merge_size**2
    g = torch.Generator().manual_seed(seed)
    parts = [torch.randint(1, 80, (prefix,), generator=g)]
    for token, grids in ((cfg.image_token_id, images), (cfg.video_token_id, videos)):
        for t, h, w in grids:
            parts += [torch.tensor([cfg.vision_start_token_id]), torch.full((t * h * w // m2,), token),
                      torch.tensor([cfg.vision_end_token_id])]
    parts.append(torch.randint(1, 80, (question,), generator=g))
    ids = torch.cat(parts)[None]
    types = (ids == cfg.image_token_id).long() + 2 * (ids == cfg.video_token_id).long()
    dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": types}
    if images:
        x["pixel_values"] = torch.randn(sum(t * h * w for t, h, w in images), dim, generator=g)
        x["image_grid_thw"] = torch.tensor([list(v) for v in images])
    vids = []
    for t, h, w in videos:
        frames = torch.randn(t, h * w, dim, generator=g)
        if static:
            frames = frames[:1] + static * frames
        vids.append(frames.reshape(t * h * w, dim))
    x["pixel_values_videos"] = torch.cat(vids)
    x["video_grid_thw"] = torch.tensor([list(v) for v in videos])
    return x


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen2vl()


@pytest.fixture(scope="module")
def qwen25():
    return tiny_qwen25()


def _model(name, qwen, qwen25):
    return qwen25 if name == "qwen25" else qwen


def _positions(model, x):
    """The unreduced model's own M-RoPE positions (3, B, N)."""
    kw = {k: x[k] for k in ("image_grid_thw", "video_grid_thw") if k in x}
    pos, _ = model.model.get_rope_index(x["input_ids"], x["mm_token_type_ids"], attention_mask=x["attention_mask"],
                                        **kw)
    return pos


def _store(d: dict, key: str, value) -> None:
    d.setdefault(key, value)


def _reduced(model, x, method, **budget):
    """Kept original indices, the embeddings entering layer 0, rotary cos of the last layer, and logits."""
    seen: dict = {}
    lm = model.model.language_model
    with tokenreduce.patched(model, method, **budget):  # hooks after the patch's: they see the reduced inputs
        hooks = [
            lm.layers[0].register_forward_pre_hook(
                lambda mod, a, kw: _store(seen, "h", a[0] if a else kw["hidden_states"]), with_kwargs=True),
            lm.layers[-1].self_attn.register_forward_pre_hook(
                lambda mod, a, kw: _store(seen, "cos", kw["position_embeddings"][0]), with_kwargs=True),
        ]
        try:
            out = model(**x, use_cache=True)
        finally:
            for h in hooks:
                h.remove()
    return get_state(out.cache).cols[0], seen["h"], seen["cos"], out.logits


# ---- reduce nothing => the unpatched model exactly -----------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen", "qwen25"])
@pytest.mark.parametrize("method", VIDEO_METHODS)
def test_keep_one_reproduces_logits_and_generation(family, method, qwen, qwen25):
    model = _model(family, qwen, qwen25)
    x = video_inputs(model, images=((1, 4, 4),))
    ref = model(**x).logits
    gen = model.generate(**x, max_new_tokens=4, do_sample=False)
    with tokenreduce.patched(model, method, keep=1.0):
        assert torch.equal(model(**x).logits, ref)
        assert torch.equal(model.generate(**x, max_new_tokens=4, do_sample=False), gen)
    for budget in ({"per_frame": 16}, {"tokens": 10**6}):  # at or above the video's size: whole
        with tokenreduce.patched(model, method, **budget):
            assert torch.equal(model(**x).logits, ref)


# ---- positions and an independent reference ------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen", "qwen25"])
@pytest.mark.parametrize("method", VIDEO_METHODS)
def test_kept_tokens_keep_their_mrope_angles_and_equal_the_unpatched_lm(family, method, qwen, qwen25):
    """The rotary angles of every kept token equal those of its position in ``get_rope_index`` of the unreduced
    input, and the patched logits equal the unpatched LM fed the reduced embeddings at those positions."""
    model = _model(family, qwen, qwen25)
    x = video_inputs(model, static=0.3)
    cols, h, cos, logits = _reduced(model, x, method, keep=0.3)
    pos = _positions(model, x)[..., cols[0]]
    lm = model.model.language_model
    cos_ref, _ = lm.rotary_emb(torch.zeros(1, 1, 48), pos)
    assert cos.shape[1] == cols.shape[1] < x["input_ids"].shape[1]
    torch.testing.assert_close(cos, cos_ref, rtol=0, atol=0)
    ref = model.lm_head(lm(inputs_embeds=h, position_ids=pos).last_hidden_state)
    torch.testing.assert_close(logits, ref, rtol=1e-5, atol=1e-5)
    vis = x["input_ids"][0] == model.config.video_token_id
    assert vis[cols[0]].sum() == make_vlm_method(method, keep=0.3).kept_video(6, (4, 4))
    assert torch.equal(cols[0][~vis[cols[0]]], (~vis).nonzero().squeeze(1))  # every text token kept, in order


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen", "qwen25"])
@pytest.mark.parametrize("method", ["dycoke", "holitom", "quota"])
def test_generation_after_reduction_matches_reference_loop(family, method, qwen, qwen25):
    """Patched generate == greedy decoding of the unpatched LM on the reduced prefix, positions continuing."""
    model = _model(family, qwen, qwen25)
    x = video_inputs(model, static=0.3)
    with tokenreduce.patched(model, method, keep=0.3):
        gen = model.generate(**x, max_new_tokens=5, do_sample=False)[0, x["input_ids"].shape[1] :]
    cols, h, _cos, _ = _reduced(model, x, method, keep=0.3)
    lm, n = model.model.language_model, x["input_ids"].shape[1]
    pos = _positions(model, x)
    out = lm(inputs_embeds=h, position_ids=pos[..., cols[0]], use_cache=True)
    cache, toks = out.cache, []
    nxt = model.lm_head(out.last_hidden_state[:, -1]).argmax(-1)
    delta = int(pos.max()) + 1 - n
    for t in range(5):
        toks.append(int(nxt))
        p = torch.full((3, 1, 1), n + t + delta)
        out = lm(inputs_embeds=model.model.get_input_embeddings()(nxt[:, None]), position_ids=p, cache=cache,
                 use_cache=True)
        cache = out.cache
        nxt = model.lm_head(out.last_hidden_state[:, -1]).argmax(-1)
    assert gen.tolist() == toks


@torch.no_grad()
def test_images_pass_through_and_image_methods_leave_videos(qwen):
    x = video_inputs(qwen, images=((1, 8, 8),))
    ids = x["input_ids"][0]
    img, vid = ids == qwen.config.image_token_id, ids == qwen.config.video_token_id
    cols, *_ = _reduced(qwen, x, "dycoke", keep=0.25)
    assert img[cols[0]].sum() == img.sum() and vid[cols[0]].sum() == round(0.25 * int(vid.sum()))
    cols, *_ = _reduced(qwen, x, "visual-random", keep=0.25)
    assert vid[cols[0]].sum() == vid.sum() and img[cols[0]].sum() == round(0.25 * int(img.sum()))


# ---- budgets ------------------------------------------------------------------------------------------
EXACT = ["dycoke", "fastvid", "holitom", "prunevid", "quota", "video-random"]


@torch.no_grad()
@pytest.mark.parametrize("method", VIDEO_METHODS)
@pytest.mark.parametrize("budget", [{"keep": 0.1}, {"keep": 0.5}, {"tokens": 20}, {"per_frame": 5}, {"per_frame": 1}])
def test_budgets_are_honoured(method, budget, qwen):
    x = video_inputs(qwen, static=0.3)
    m = make_vlm_method(method, **budget)
    cols, *_ = _reduced(qwen, x, method, **budget)
    vis = (x["input_ids"][0] == qwen.config.video_token_id)[cols[0]].sum()
    want = m.video_budget(6, (4, 4))
    assert vis == m.kept_video(6, (4, 4))
    if method in EXACT:
        assert vis == want
    elif method == "video-pool":  # at least one cell per frame
        assert vis <= max(want, 6)
    else:  # whole frames, at least one
        assert vis <= max(want, 16)


def test_budget_arithmetic():
    m = make_vlm_method("dycoke", per_frame=5)
    assert m.video_budget(6, (4, 4)) == 30 and m.video_budget(6, (2, 2)) == 24
    assert make_vlm_method("dycoke", keep=0.25).video_budget(8, (4, 4)) == 32
    assert make_vlm_method("dycoke", tokens=7).video_budget(8, (4, 4)) == 7
    assert make_vlm_method("dycoke", tokens=10**6).video_budget(8, (4, 4)) == 128


@pytest.mark.parametrize(
    "method,params,match",
    [
        ("dycoke", {}, "give exactly one of keep"),
        ("dycoke", {"keep": 0.5, "per_frame": 4}, "give exactly one of keep .* per_frame"),
        ("dycoke", {"keep": 1.5}, r"keep must be in \(0, 1\]"),
        ("dycoke", {"tokens": 0}, "tokens must be a positive int"),
        ("dycoke", {"per_frame": 0}, "per_frame must be an int >= 1"),
        ("dycoke", {"per_frame": 2.5}, "per_frame must be an int >= 1"),
        ("dycoke", {"per_frame": True}, "per_frame must be an int >= 1"),
        ("dycoke", {"keep": 0.5, "window": 1}, r"window must be in \[2, 64\]"),
        ("fastvid", {"keep": 0.5, "threshold": 2.0}, r"threshold must be in \[-1, 1\]"),
        ("fastvid", {"keep": 0.5, "salient": 1.5}, r"salient must be in \[0, 1\]"),
        ("fastvid", {"keep": 0.5, "segments": 0}, r"segments must be in \[1, inf\)"),
        ("fastvid", {"keep": 0.5, "stride": 0}, "stride must be in"),
        ("holitom", {"keep": 0.5, "knn": 0}, "knn must be in"),
        ("holitom", {"keep": 0.5, "threshold": "high"}, "threshold must be a real number"),
        ("prunevid", {"keep": 0.5, "segments": 1.5}, "segments must be an int"),
        ("quota", {"keep": 0.5, "temperature": 0.0}, r"temperature must be in \(0, inf\)"),
        ("video-random", {"keep": 0.5, "seed": -1}, "seed must be in"),
    ],
)
def test_parameters_are_checked_at_construction(method, params, match):
    with pytest.raises(ValueError, match=match):
        make_vlm_method(method, **params)


def test_a_family_without_video_is_refused_before_any_compute():
    llava = tiny_llava()
    with pytest.raises(ValueError, match="takes no video input"):
        tokenreduce.patch(llava, "dycoke", keep=0.5)
    assert tokenreduce.patch_info(llava) is None
    x = llava_inputs(llava)
    with torch.no_grad():
        llava(**x)  # still works, unpatched


def test_video_methods_declare_capabilities_and_cite_papers():
    import importlib

    for name in VIDEO_METHODS:
        cls = type(make_vlm_method(name, keep=0.5))
        assert cls.needs_video and cls.__module__.startswith("tokenreduce.vlm.video.methods.")
        doc = importlib.import_module(cls.__module__).__doc__
        assert doc and (name.startswith("video-") or "arXiv" in doc)
    assert make_vlm_method("quota", keep=0.5).needs_query
    assert not make_vlm_method("dycoke", keep=0.5).needs_query


# ---- batches ------------------------------------------------------------------------------------------
def _left_pad(rows):
    n = max(r["input_ids"].shape[1] for r in rows)
    out = {}
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        t = torch.zeros(len(rows), n, dtype=torch.long)
        for i, r in enumerate(rows):
            t[i, n - r[key].shape[1] :] = r[key][0]
        out[key] = t
    out["pixel_values_videos"] = torch.cat([r["pixel_values_videos"] for r in rows])
    out["video_grid_thw"] = torch.cat([r["video_grid_thw"] for r in rows])
    return out


@torch.no_grad()
@pytest.mark.parametrize("method", VIDEO_METHODS)
def test_left_padded_batch_equals_single_rows(method, qwen):
    rows = [video_inputs(qwen, prefix=p, seed=s, static=st) for p, s, st in ((3, 1, 0.3), (7, 2, 0.0))]
    batch = _left_pad(rows)
    with tokenreduce.patched(qwen, method, keep=0.3):
        both = qwen(**batch).logits[:, -1]
        singles = torch.cat([qwen(**r).logits[:, -1] for r in rows])
        gen = qwen.generate(**batch, max_new_tokens=3, do_sample=False)[:, -3:]
        gen1 = torch.cat([qwen.generate(**r, max_new_tokens=3, do_sample=False)[:, -3:] for r in rows])
    torch.testing.assert_close(both, singles, rtol=1e-4, atol=1e-4)
    assert torch.equal(gen, gen1)


# ---- cost ---------------------------------------------------------------------------------------------
# parameters that make the data-dependent parts of a method's cost fixed (segments cut at every frame; no
# place merged over time), so the analytic count must equal what PyTorch executes exactly
COST_PARAMS = {"fastvid": {"segments": 6}, "holitom": {"threshold": 1.0}, "prunevid": {"threshold": 1.0}}


@torch.no_grad()
@pytest.mark.parametrize("method", [None, *VIDEO_METHODS])
def test_prefill_macs_formula_equals_flop_counter(method, qwen):
    from tokenreduce.bench.flops import measured_flops
    from tokenreduce.vlm.flops import DecoderShape, prefill_macs

    x = video_inputs(qwen)
    vision = measured_flops(lambda: qwen.model.get_video_features(x["pixel_values_videos"], x["video_grid_thw"]))
    params = COST_PARAMS.get(method, {})
    if method is None:
        total = measured_flops(lambda: qwen(**x, logits_to_keep=1))
    else:
        with tokenreduce.patched(qwen, method, keep=0.3, **params):
            total = measured_flops(lambda: qwen(**x, logits_to_keep=1))
    m = None if method is None else make_vlm_method(method, keep=0.3, **params)
    ids = x["input_ids"][0]
    text_after = len(ids) - 1 - int((ids == qwen.config.video_token_id).nonzero().max())
    want = prefill_macs(DecoderShape.of(qwen.config.text_config), m, len(ids), [(6, 4, 4)], text_after)
    assert (total - vision) // 2 == want


def test_bench_video_cli_on_a_tiny_qwen25(tmp_path, capsys, monkeypatch):
    """The CLI runs end to end (tiny Qwen2.5-VL in place of the 7B-shaped one): measured MACs equal the formula,
    ratios against the unreduced baseline, and the stream's held tokens stay under its budget."""
    import json

    from tokenreduce.vlm.video import bench, cli

    monkeypatch.setattr(bench, "qwen25_7b", lambda layers, dtype: tiny_qwen25(layers=layers))
    out = tmp_path / "video.json"
    assert cli.main(["--frames", "6", "--grid", "4", "--llm-layers", "2", "--methods", "dycoke,video-pool",
                     "--keep", "0.25,0.5", "--repeats", "1", "--stream-frames", "40", "--budget", "50",
                     "--checkpoints", "1,20,40", "--dtype", "float32", "--no-progress", "--json", str(out)]) == 0
    data = json.loads(out.read_text())
    rows = data["rows"]
    assert [r["method"] for r in rows] == ["unreduced", "dycoke", "dycoke", "video-pool", "video-pool"]
    assert all(r["macs"] == r["llm_macs_formula"] for r in rows)
    assert rows[0]["macs_ratio"] == 1.0 and all(r["macs_ratio"] < 1.0 for r in rows[1:])
    assert [r["visual_tokens"] for r in rows[1:3]] == [24, 48]
    stream = data["stream"]
    assert len(stream["held"]) == 40 and max(stream["held"]) <= 50
    assert [a["frame"] for a in stream["answers"]] == [1, 20, 40]
    assert "llm28_macs_ratio" in capsys.readouterr().out
    assert cli.main(["--methods", "visual-pool", "--no-progress"]) == 2
    assert cli.main(["--keep", "1.5", "--no-progress"]) == 2


# ---- with a KV press ------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("method", ["dycoke", "quota", "video-random"])  # subset methods: kept rows are inputs'
def test_video_method_and_kv_press_compose_like_the_hand_reference(method, qwen):
    """DyCoke's TTM (or any video method before the LLM) + SnapKV in one ``generate`` == the unpatched LM fed the
    kept embeddings at their M-RoPE positions, its prefill cache pressed by SnapKV alone, greedy by hand; keep-all
    on both sides == the unpatched model."""
    from tokenreduce.core.provenance import Provenance
    from tokenreduce.kv import SnapKV, apply_press

    x = video_inputs(qwen, static=0.3, question=10)
    new = 4
    ref = qwen.generate(**x, max_new_tokens=new, do_sample=False)
    with tokenreduce.patched(qwen, method, keep=1.0), apply_press(qwen, SnapKV(keep=1.0, window=4)):
        assert torch.equal(qwen.generate(**x, max_new_tokens=new, do_sample=False), ref)
    press = SnapKV(keep=0.5, window=4, kernel=3)
    with tokenreduce.patched(qwen, method, keep=0.3):
        kept = get_state(qwen(**x, use_cache=True).cache).cols[0]
        with apply_press(qwen, press):
            out = qwen.generate(**x, max_new_tokens=new, do_sample=False)
    n = x["input_ids"].shape[1]
    seen = {}
    h = qwen.model.language_model.register_forward_pre_hook(
        lambda mod, a, kw: seen.update(emb=kw["inputs_embeds"]), with_kwargs=True)
    try:
        qwen(**x)
    finally:
        h.remove()
    pos = _positions(qwen, x)
    red_pos = Provenance(kept, torch.ones_like(kept, dtype=torch.bool), n).kept_positions(pos)
    lm, toks = qwen.model.language_model, []
    step = int(pos.max()) + 1 - n
    with apply_press(lm, press):
        o = lm(inputs_embeds=seen["emb"][:, kept[0]], position_ids=red_pos, use_cache=True)
        cache = o.cache
        for t in range(new):
            tok = qwen.lm_head(o.last_hidden_state[:, -1]).argmax(-1)
            toks.append(tok)
            o = lm(inputs_embeds=qwen.get_input_embeddings()(tok)[:, None],
                   position_ids=torch.full((3, 1, 1), n + t + step), cache=cache, use_cache=True)
            cache = o.cache
    assert torch.equal(out[:, n:], torch.stack(toks, 1))
