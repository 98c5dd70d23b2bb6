"""Video methods' stages inside the LLM: DyCoke's dynamic KV pruning while decoding, HoliTom's inner-LLM merging,
PruneVid's question-guided KV pruning -- on tiny Qwen2-VL (M-RoPE) and LLaVA-OneVision (1-D positions); keep-all
also on Qwen2.5-VL.

Each stage is checked against a written-out reference: the unpatched LM in eager mode (its own attention
weights), the selection and merging done by hand, the layers after the stage called one by one."""

from __future__ import annotations

import pytest
import torch
from test_vlm_video import _positions, tiny_qwen25, video_inputs
from test_vlm_video_llava import V, tiny_onevision
from test_vlm_video_llava import inputs as ov_inputs
from transformers import DynamicCache
from vlm_models import tiny_qwen2vl

import tokenreduce
from tokenreduce.vlm import make_vlm_method
from tokenreduce.vlm.state import get_state

STAGES = {  # method -> parameters turning its LLM stage on (layer 2 of the tiny 3/4-layer LLMs)
    "dycoke": {"kv_keep": 0.3, "kv_layer": 2},
    "holitom": {"llm_keep": 0.5, "llm_layer": 2},
    "prunevid": {"kv_keep": 0.4, "kv_layer": 2},
}


@pytest.fixture(scope="module")
def models():
    eager_qwen, eager_ov = tiny_qwen2vl(impl="eager"), tiny_onevision()
    eager_ov.set_attn_implementation("eager")
    return {"qwen": (tiny_qwen2vl(), eager_qwen), "onevision": (tiny_onevision(), eager_ov), "qwen25": (tiny_qwen25(),)}


def _inputs(family, model, **kw):
    return video_inputs(model, static=0.3, question=kw.pop("question", 8), **kw) if family != "onevision" else (
        ov_inputs(model, static=0.3, question=kw.pop("question", 8), **kw))


def _video_flags(family, model, x):
    """(N,) the video run's tokens (OneVision's trailing newline excluded)."""
    ids = x["input_ids"][0]
    vis = ids == (model.config.video_token_id if family == "qwen" else V + 2)
    if family == "onevision":
        vis[int(vis.nonzero().max())] = False
    return vis


def _prefix_positions(family, model, x, cols):
    """Positions of the kept tokens ``cols`` (1, K): M-RoPE (3, 1, K) from get_rope_index, or 1-D."""
    return _positions(model, x)[..., cols[0]] if family == "qwen" else cols


def _decode_position(family, model, x, step: int):
    n = x["input_ids"].shape[1]
    if family == "qwen":
        return torch.full((3, 1, 1), n + step + int(_positions(model, x).max()) + 1 - n)
    return torch.tensor([[n + step]])


def _lm(model):
    return model.model.language_model


def _store(d, key, value):
    d.setdefault(key, value)


def _prefill(model, x, method, **params):
    """Patched prefill: layer-0 input, every layer's map, the last layer's rotary cos, logits, cache."""
    seen: dict = {}
    lm = _lm(model)
    with tokenreduce.patched(model, method, **params):
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
    return seen["h"], get_state(out.cache).cols, seen["cos"], out.logits, out.cache


def _causal(n: int) -> torch.Tensor:
    return torch.full((n, n), torch.finfo(torch.float32).min).triu(1)[None, None]


def _run_layers(lm, hidden, pos, layers, cache=None):
    """The unpatched decoder layers ``layers`` on ``hidden`` at positions ``pos`` (causal, no padding)."""
    pe = lm.rotary_emb(hidden, pos)
    mask = _causal(hidden.shape[1]) if hidden.shape[1] > 1 else None  # one query sees every entry
    for i in layers:
        hidden = lm.layers[i](hidden, attention_mask=mask, position_embeddings=pe, cache=cache,
                              use_cache=cache is not None)
    return hidden


# ---- reduce nothing ---------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen", "qwen25", "onevision"])
@pytest.mark.parametrize("method", sorted(STAGES))
def test_stage_that_keeps_everything_reproduces_logits_and_generate(family, method, models):
    """A stage's share of 1 (off), and a share that rounds to every video token (the stage's code runs and
    chooses all: DyCoke's per-step masks hide nothing), both equal the unpatched model exactly."""
    model = models[family][0]
    x = _inputs(family, model)
    ref, gen = model(**x).logits, model.generate(**x, max_new_tokens=5, do_sample=False)
    share = "llm_keep" if method == "holitom" else "kv_keep"
    for value in (1.0, 0.999):
        params = {**STAGES[method], share: value}
        with tokenreduce.patched(model, method, keep=1.0, **params):
            assert torch.equal(model(**x).logits, ref)
            assert torch.equal(model.generate(**x, max_new_tokens=5, do_sample=False), gen)


@pytest.mark.parametrize(
    "method,params,match",
    [
        ("dycoke", {"kv_keep": 0.0}, r"kv_keep must be in \(0, 1\]"),
        ("dycoke", {"kv_keep": 1.5}, r"kv_keep must be in \(0, 1\]"),
        ("dycoke", {"kv_layer": 0}, r"kv_layer must be in \[1, inf\)"),
        ("dycoke", {"kv_refresh": 1.5}, r"kv_refresh must be in \[-1, 1\]"),
        ("holitom", {"llm_keep": -0.1}, r"llm_keep must be in \(0, 1\]"),
        ("holitom", {"llm_layer": 0}, r"llm_layer must be in \[1, inf\)"),
        ("prunevid", {"kv_keep": 2}, r"kv_keep must be in \(0, 1\]"),
        ("prunevid", {"kv_layer": 1.5}, "kv_layer must be an int"),
    ],
)
def test_stage_parameters_are_checked_at_construction(method, params, match):
    with pytest.raises(ValueError, match=match):
        make_vlm_method(method, keep=0.5, **params)


@pytest.mark.parametrize("method", sorted(STAGES))
def test_a_stage_layer_the_llm_lacks_is_refused_at_patch_time(method, models):
    model = models["qwen"][0]  # 4 layers: a stage may sit before layers 1..3
    layer = "llm_layer" if method == "holitom" else "kv_layer"
    with pytest.raises(ValueError, match=rf"{layer} must be in \[1, 3\] for a 4-layer LLM"):
        tokenreduce.patch(model, method, keep=0.5, **{**STAGES[method], layer: 4})
    assert tokenreduce.patch_info(model) is None


# ---- DyCoke: dynamic KV pruning while decoding ---------------------------------------------------------------
def _reference_choices(attn_rows, vis, share, refresh):
    """The written-out rule: per step, the ``share`` video entries the current token attends to most (heads
    averaged) in the rating layer, chosen again only when the cosine with the previous step's attention over
    the video entries is below ``refresh``."""
    out, last, chosen = [], None, None
    k = max(1, round(share * int(vis.sum())))
    for row in attn_rows:
        a = torch.where(vis, row, 0.0)
        top = torch.zeros_like(vis)
        top[torch.sort(torch.where(vis, row, float("-inf")), descending=True, stable=True).indices[:k]] = True
        if last is None or float(torch.nn.functional.cosine_similarity(a, last, dim=0)) < refresh:
            chosen = top
        last = a
        out.append(chosen.clone())
    return out


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen", "onevision"])
@pytest.mark.parametrize("refresh", [0.9, 1.0])
def test_dycoke_decode_choices_equal_the_reference_and_text_is_never_hidden(family, refresh, models):
    """After TTM (keep 0.5), at every decoding step the attention of layers >= kv_layer reads exactly the video
    entries the reference rule chooses, and all text, the trailing newline and the generated tokens; nothing is
    evicted (the cache still holds every entry)."""
    model, eager = models[family]
    x = _inputs(family, model)
    params = dict(keep=0.5, kv_keep=0.3, kv_layer=2, kv_refresh=refresh)
    new = 6
    masks: dict[int, list] = {2: [], 3 if family == "qwen" else 2: []}  # (mask, what stands for the cache)
    with tokenreduce.patched(model, "dycoke", **params):
        lm = _lm(model)
        hooks = [lm.layers[i].register_forward_pre_hook(
            lambda mod, a, kw, i=i: masks[i].append((kw["attention_mask"], kw["cache"])), with_kwargs=True)
            for i in masks]
        try:
            gen = model.generate(**x, max_new_tokens=new, do_sample=False)
        finally:
            for h in hooks:
                h.remove()
    h0, cols, _cos, _logits, _cache = _prefill(model, x, "dycoke", **params)
    n0, n = cols[0].shape[1], x["input_ids"].shape[1]
    vis = _video_flags(family, model, x)[cols[0][0]]  # video entries among the kept prefix
    steps = gen[:, n:-1]  # tokens fed by the decoding steps
    emb = torch.cat([h0, model.get_input_embeddings()(steps)], 1)
    pos = torch.cat([_prefix_positions(family, model, x, cols[0])]
                    + [_decode_position(family, model, x, t) for t in range(new - 1)], -1)
    attn = _lm(eager)(inputs_embeds=emb, position_ids=pos, output_attentions=True).attentions[1]  # layer 1
    rows = [attn[0, :, n0 + t, :n0].mean(0) for t in range(new - 1)]
    want = _reference_choices(rows, vis, 0.3, refresh)
    for layer, seen in masks.items():
        decode = [(m, c) for m, c in seen if m is not None and m.shape[2] == 1]
        assert len(decode) == new - 1
        for t, ((m, view), chosen) in enumerate(zip(decode, want)):
            read = view.take[0, :-1][m[0, 0, 0, :-1] == 0]  # the stored entries this step's attention reads
            expect = [i for i in range(n0) if not vis[i] or chosen[i]] + list(range(n0, n0 + t))  # + generated
            assert read.tolist() == expect
            assert view.take[0, -1] == n0 + t  # and the new token, stored after all n0 + t before it
            assert len(expect) - t - int((~vis).sum()) == round(0.3 * int(vis.sum()))
        assert decode[-1][1].cache.get_seq_length(layer) == n0 + new - 1  # nothing was evicted
    if refresh == 1.0:  # chosen again at every step: the choices do change while decoding
        assert any(not torch.equal(a, b) for a, b in zip(want, want[1:]))


@torch.no_grad()
def test_dycoke_decode_stage_refuses_a_cache_pressed_per_head(models):
    """A KV press that keeps entries per KV head leaves no entry standing for one token: the decode stage says so
    instead of choosing nothing."""
    from tokenreduce.kv import SnapKV, apply_press

    model = models["qwen"][0]
    x = _inputs("qwen", model)
    with tokenreduce.patched(model, "dycoke", keep=0.5, **STAGES["dycoke"]), apply_press(model, SnapKV(keep=0.5)):
        with pytest.raises(ValueError, match="entries that stand for single tokens"):
            model.generate(**x, max_new_tokens=3, do_sample=False)


# ---- HoliTom and PruneVid: a stage before a decoder layer ---------------------------------------------------
def _stage_reference(family, eager, x, h0, cols0, method):
    """Layers 0-1 unpatched on the reduced prefix; before layer 2 the selection (and HoliTom's merging) by hand;
    layers 2.. on the kept tokens. Returns kept prefix slots, the final states, and the per-layer cache."""
    lm = _lm(eager)
    vis = _video_flags(family, eager, x)[cols0[0]]
    pos = _prefix_positions(family, eager, x, cols0)
    out = lm(inputs_embeds=h0, position_ids=pos, output_attentions=True, output_hidden_states=True)
    attn, hidden = out.attentions[1][0], out.hidden_states[2][0].clone()  # layer 1's weights, layer 2's input
    share = STAGES[method]["llm_keep" if method == "holitom" else "kv_keep"]
    k = max(1, round(share * int(vis.sum())))
    if method == "holitom":
        score = attn.mean(0)[-1]
    else:
        question = torch.arange(len(vis)) > int(vis.nonzero().max())
        score = attn[:, question].amax(dim=(0, 1))
    top = torch.sort(torch.where(vis, score, float("-inf")), descending=True, stable=True).indices[:k]
    keep = ~vis
    keep[top] = True
    if method == "holitom":  # each dropped token into its most similar kept one; a kept token: the group's mean
        kept_v, groups = top.sort().values, {}
        unit = torch.nn.functional.normalize(hidden, dim=-1)
        for d in (vis & ~keep).nonzero().squeeze(1).tolist():
            j = int(kept_v[int((unit[kept_v] @ unit[d]).argmax())])
            groups.setdefault(j, [j]).append(d)
        for j, members in groups.items():
            hidden[j] = hidden[members].mean(0)
    slots = keep.nonzero().squeeze(1)
    cache = DynamicCache(config=eager.config.get_text_config())
    _run_layers(lm, h0, pos, range(2), cache)
    if method == "prunevid":  # every layer's cache keeps only the chosen entries
        for layer in cache.layers[:2]:
            layer.keys, layer.values = layer.keys[:, :, slots], layer.values[:, :, slots]
    pos_kept = pos[..., slots]
    final = _run_layers(lm, hidden[slots][None], pos_kept, range(2, len(lm.layers)), cache)
    return slots, lm.norm(final), cache, pos_kept


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen", "onevision"])
@pytest.mark.parametrize("method", ["holitom", "prunevid"])
def test_prefill_stage_equals_the_written_out_reference(family, method, models):
    """Kept tokens, logits and every layer's cache equal the reference; kept tokens' rotary angles equal the
    unreduced input's (get_rope_index) at their original positions; PruneVid's caches all hold only the kept
    entries; text is never dropped."""
    model, eager = models[family]
    x = _inputs(family, model)
    h0, cols, cos, logits, cache = _prefill(model, x, method, keep=0.5, **STAGES[method])
    outer = _prefill(model, x, method, keep=0.5)[1][0]  # before the LLM alone (PruneVid rewrites layer 0's map)
    slots, final, ref_cache, pos_kept = _stage_reference(family, eager, x, h0, outer, method)
    assert torch.equal(cols[-1][0], outer[0][slots])
    torch.testing.assert_close(logits, model.lm_head(final), rtol=1e-4, atol=1e-4)
    if family == "qwen":
        cos_ref, _ = _lm(model).rotary_emb(torch.zeros(1, 1, 48), _positions(model, x)[..., cols[-1][0]])
        torch.testing.assert_close(cos, cos_ref, rtol=0, atol=0)
    text = ~_video_flags(family, model, x)
    assert text.nonzero().squeeze(1).tolist() == [c for c in cols[-1][0].tolist() if text[c]]
    lengths = [cache.get_seq_length(i) for i in range(len(cache.layers))]
    if method == "prunevid":
        assert lengths == [len(slots)] * len(lengths) and all(torch.equal(c, cols[-1]) for c in cols)
    else:
        assert lengths[:2] == [outer.shape[1]] * 2 and lengths[2:] == [len(slots)] * (len(lengths) - 2)
    for i, layer in enumerate(cache.layers):
        torch.testing.assert_close(layer.keys, ref_cache.layers[i].keys, rtol=1e-4, atol=1e-4)


@torch.no_grad()
@pytest.mark.parametrize("family", ["qwen", "onevision"])
@pytest.mark.parametrize("method", ["holitom", "prunevid"])
def test_generation_after_the_stage_matches_a_greedy_loop_over_the_reference_cache(family, method, models):
    model, eager = models[family]
    x = _inputs(family, model)
    new = 4
    with tokenreduce.patched(model, method, keep=0.5, **STAGES[method]):
        gen = model.generate(**x, max_new_tokens=new, do_sample=False)[0, x["input_ids"].shape[1] :].tolist()
    h0 = _prefill(model, x, method, keep=0.5, **STAGES[method])[0]
    outer = _prefill(model, x, method, keep=0.5)[1][0]
    _slots, final, cache, _pos = _stage_reference(family, eager, x, h0, outer, method)
    lm, toks = _lm(eager), []
    nxt = eager.lm_head(final[:, -1]).argmax(-1)
    for t in range(new):  # the cache's layers hold different entries (HoliTom): layer by layer, one query each
        toks.append(int(nxt))
        h = _run_layers(lm, eager.get_input_embeddings()(nxt[:, None]), _decode_position(family, eager, x, t),
                        range(len(lm.layers)), cache)
        nxt = eager.lm_head(lm.norm(h)[:, -1]).argmax(-1)
    assert gen == toks


# ---- batches and cost ---------------------------------------------------------------------------------------
@torch.no_grad()
@pytest.mark.parametrize("method", sorted(STAGES))
def test_left_padded_batch_equals_single_rows(method, models):
    from test_vlm_video import _left_pad

    model = models["qwen"][0]
    rows = [video_inputs(model, prefix=p, seed=s, static=0.3, question=8) for p, s in ((3, 1), (7, 2))]
    batch = _left_pad(rows)
    with tokenreduce.patched(model, method, keep=0.5, **STAGES[method]):
        both = model(**batch).logits[:, -1]
        singles = torch.cat([model(**r).logits[:, -1] for r in rows])
        gen = model.generate(**batch, max_new_tokens=4, do_sample=False)[:, -4:]
        gen1 = torch.cat([model.generate(**r, max_new_tokens=4, do_sample=False)[:, -4:] for r in rows])
    torch.testing.assert_close(both, singles, rtol=1e-4, atol=1e-4)
    assert torch.equal(gen, gen1)


@torch.no_grad()
@pytest.mark.parametrize("method", ["holitom", "prunevid"])
def test_prefill_macs_formula_equals_flop_counter(method, models):
    """The stage's rating (the previous layer's keys, the raters' queries, their products), HoliTom's
    similarities and the shorter later layers, as FlopCounterMode counts them (no place merged over time:
    threshold 1); and the KV entries each layer holds."""
    from tokenreduce.bench.flops import measured_flops
    from tokenreduce.vlm.flops import DecoderShape, prefill_macs

    model = models["qwen"][0]
    x = video_inputs(model, question=8)
    params = dict(keep=0.5, threshold=1.0, **STAGES[method])
    vision = measured_flops(lambda: model.model.get_video_features(x["pixel_values_videos"], x["video_grid_thw"]))
    with tokenreduce.patched(model, method, **params):
        total = measured_flops(lambda: model(**x, logits_to_keep=1))
        cache = model(**x, use_cache=True).cache
    m = make_vlm_method(method, **params)
    ids = x["input_ids"][0]
    text_after = len(ids) - 1 - int((ids == model.config.video_token_id).nonzero().max())
    shape = DecoderShape.of(model.config.text_config)
    assert (total - vision) // 2 == prefill_macs(shape, m, len(ids), [(6, 4, 4)], text_after)
    assert m.cache_counts(len(ids), [(6, 4, 4)], 4) == [cache.get_seq_length(i) for i in range(4)]


def test_bench_video_rows_of_the_stages(tmp_path, monkeypatch):
    """``tokenreduce bench video`` with the stages' rows (tiny Qwen2.5-VL in place of the 7B-shaped one): each
    staged row costs less than its method before the LLM alone at 28 layers; PruneVid's stores less KV, DyCoke's
    stores the same but reads less while decoding; a 1-layer model is refused for them."""
    import json

    from tokenreduce.vlm.video import bench, cli

    monkeypatch.setattr(bench, "qwen25_7b", lambda layers, dtype: tiny_qwen25(layers=layers))
    out = tmp_path / "video.json"
    methods = "dycoke,dycoke+kv,holitom,holitom+llm,prunevid,prunevid+kv"
    assert cli.main(["--frames", "6", "--grid", "4", "--llm-layers", "4", "--methods", methods, "--keep", "0.5",
                     "--repeats", "1", "--stream-frames", "0", "--dtype", "float32", "--no-progress",
                     "--json", str(out)]) == 0
    rows = {r["method"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["unreduced"]["decode_read_ratio"] == 1.0
    for base, staged in (("dycoke", "dycoke+kv"), ("holitom", "holitom+llm"), ("prunevid", "prunevid+kv")):
        assert rows[staged]["visual_tokens"] == rows[base]["visual_tokens"]  # the budget before the LLM
        assert rows[staged]["decode_read_ratio"] < rows[base]["decode_read_ratio"]
    assert rows["dycoke+kv"]["kv_mb_28l_bf16"] == rows["dycoke"]["kv_mb_28l_bf16"]
    assert rows["dycoke+kv"]["llm28_macs_ratio"] == rows["dycoke"]["llm28_macs_ratio"]
    for base, staged in (("holitom", "holitom+llm"), ("prunevid", "prunevid+kv")):
        assert rows[staged]["llm28_macs_ratio"] < rows[base]["llm28_macs_ratio"]
        assert rows[staged]["kv_mb_28l_bf16"] < rows[base]["kv_mb_28l_bf16"]
    assert cli.main(["--llm-layers", "1", "--methods", "holitom+llm", "--no-progress"]) == 2
