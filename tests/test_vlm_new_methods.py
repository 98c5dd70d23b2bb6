"""The newer visual-token methods (DART, DivPrune, VisPruner, CDPruner, VTC-CLS, FoPru, MustDrop, dynamic exit,
downsampling) on tiny random LLaVA-1.5 / Qwen2-VL: exact budgets, keep-all exactness, batch and padding
independence, MACs equal to what runs, early errors, and independent references for the subtle selections."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from vlm_models import llava_inputs, qwen2vl_inputs, tiny_llava, tiny_llava_next, tiny_qwen2vl

import tokenreduce
from tokenreduce.core.diversity import dpp_greedy_map, max_min_greedy
from tokenreduce.vlm import make_vlm_method
from tokenreduce.vlm.methods.cdpruner import conditional_kernel
from tokenreduce.vlm.methods.dart import dart_select
from tokenreduce.vlm.state import get_state

BEFORE = ["divprune", "vispruner", "cdpruner", "vtc-cls", "fopru", "downsample"]
INSIDE = ["dart", "dyvte", "mustdrop"]
NEW = BEFORE + INSIDE
NO_CLS = ["divprune", "cdpruner", "dart", "dyvte", "mustdrop"]  # also run on Qwen2-VL (no [CLS])


@pytest.fixture(scope="module")
def llava():
    return tiny_llava()


@pytest.fixture(scope="module")
def qwen():
    return tiny_qwen2vl()


def _case(family, llava, qwen):
    if family == "llava":
        return llava, llava_inputs(llava)
    return qwen, qwen2vl_inputs(qwen)


def _n_vis(model, x):
    return int((x["input_ids"][0] == model.config.image_token_id).sum())


@torch.no_grad()
@pytest.mark.parametrize("family,method", [("llava", m) for m in NEW] + [("qwen", m) for m in NO_CLS])
def test_keep_all_reproduces_logits_and_generation(family, method, llava, qwen):
    model, x = _case(family, llava, qwen)
    ref = model(**x).logits
    gen = model.generate(**x, max_new_tokens=4, do_sample=False)
    with tokenreduce.patched(model, method, keep=1.0):
        assert torch.equal(model(**x).logits, ref)
        assert torch.equal(model.generate(**x, max_new_tokens=4, do_sample=False), gen)


def _visual_per_layer(model, x, method):
    """Visual tokens each decoder layer's cache holds after a patched prefill, and the method."""
    with tokenreduce.patched(model, method):
        out = model(**x, use_cache=True)
    visual = x["input_ids"][0] == model.config.image_token_id
    return [int(visual[c[0]].sum()) for c in get_state(out.cache).cols]


@torch.no_grad()
@pytest.mark.parametrize("family,method", [("llava", m) for m in NEW] + [("qwen", m) for m in NO_CLS])
@pytest.mark.parametrize("tokens", [5, 12])
def test_budget_is_exact_and_token_counts_match_the_cache(family, method, tokens, llava, qwen):
    """The visual tokens reaching each LLM layer are the budget (downsample: its pooled grid; dynamic exit
    with threshold 0: all until its latest layer, then none), and the method's own per-layer token counts
    (its MAC model) equal the cache."""
    model, x = _case(family, llava, qwen)
    params = {"threshold": 0.0} if method == "dyvte" else {}
    m = make_vlm_method(method, tokens=tokens, **params)
    seen = _visual_per_layer(model, x, m)
    n, n_vis, depth = x["input_ids"].shape[1], _n_vis(model, x), len(seen)
    grid = (8, 8) if family == "llava" else (4, 6)
    if method in BEFORE:
        want = [m.kept(grid)] * depth
        pooled = math.prod(tokenreduce.vlm.reduce.pool_shape(*grid, tokens))
        assert want[0] == (pooled if method == "downsample" else tokens)
    elif method == "dyvte":
        last = m.latest(n_vis, depth)
        want = [n_vis if i < last else 0 for i in range(depth)]
    elif method == "mustdrop":
        want = [m.before_llm.kept(grid) if i < m.layer else tokens for i in range(depth)]
        assert want[0] < n_vis
    else:
        want = [n_vis if i < m.layer else tokens for i in range(depth)]
    assert seen == want
    assert [c - (n - n_vis) for c in m.token_counts(n, [grid], depth)] == want


@torch.no_grad()
def test_dynamic_exit_leaves_at_the_first_layer_when_the_text_ignores_the_image(llava):
    """threshold=1: the last token's visual attention mass is always below 1, so every visual token leaves
    before layer ``first``; a threshold of 0 never triggers (only the budget's latest layer)."""
    x = llava_inputs(llava)
    assert _visual_per_layer(llava, x, make_vlm_method("dyvte", tokens=60, threshold=1.0, first=2)) == [64, 64, 0, 0]
    assert _visual_per_layer(llava, x, make_vlm_method("dyvte", tokens=60, threshold=0.0)) == [64, 64, 64, 0]


@torch.no_grad()
@pytest.mark.parametrize("method", NEW)
def test_batch_with_left_padding_equals_single_rows(method, llava):
    rows = [llava_inputs(llava, prefix=p, seed=s) for p, s in ((3, 1), (7, 2))]
    n = max(r["input_ids"].shape[1] for r in rows)
    ids = torch.zeros(2, n, dtype=torch.long)
    mask = torch.zeros(2, n, dtype=torch.long)
    for i, r in enumerate(rows):
        L = r["input_ids"].shape[1]
        ids[i, n - L :], mask[i, n - L :] = r["input_ids"][0], 1
    batch = {"input_ids": ids, "attention_mask": mask, "pixel_values": torch.cat([r["pixel_values"] for r in rows])}
    params = {"threshold": 0.0} if method == "dyvte" else {}
    with tokenreduce.patched(llava, method, keep=0.3, **params):
        both = llava(**batch).logits[:, -1]
        singles = torch.cat([llava(**r).logits[:, -1] for r in rows])
        g_both = llava.generate(**batch, max_new_tokens=4, do_sample=False)[:, n:]
        g_single = [llava.generate(**r, max_new_tokens=4, do_sample=False)[0, r["input_ids"].shape[1] :] for r in rows]
    torch.testing.assert_close(both, singles, rtol=1e-4, atol=1e-5)
    assert g_both.tolist() == [g.tolist() for g in g_single]


@torch.no_grad()
@pytest.mark.parametrize("method", [None, *NEW])
def test_prefill_macs_formula_equals_flop_counter(method, llava):
    """Each method's MACs (its token counts and its own scoring, or the projector work it saves) equal what
    PyTorch executes, with one image."""
    from tokenreduce.bench.flops import measured_flops
    from tokenreduce.vlm.flops import DecoderShape, prefill_macs

    x = llava_inputs(llava)
    cfg = llava.config
    vision = measured_flops(
        lambda: llava.model.get_image_features(
            pixel_values=x["pixel_values"], vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy,
        )
    )
    params = {"threshold": 0.0} if method == "dyvte" else {}
    m = None if method is None else make_vlm_method(method, keep=0.3, **params)
    if m is None:
        total = measured_flops(lambda: llava(**x, logits_to_keep=1))
    else:
        with tokenreduce.patched(llava, m):
            total = measured_flops(lambda: llava(**x, logits_to_keep=1))
    ids = x["input_ids"][0]
    text_after = len(ids) - 1 - int((ids == cfg.image_token_id).nonzero().max())
    want = prefill_macs(DecoderShape.of(cfg.text_config), m, len(ids), [(8, 8)], text_after,
                        vision_width=cfg.vision_config.hidden_size)
    assert (total - vision) // 2 == want


def test_methods_refused_where_they_cannot_run(llava, qwen):
    hooks = [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in llava.modules()]
    with pytest.raises(ValueError, match="no \\[CLS\\]"):
        tokenreduce.patch(qwen, "vispruner", keep=0.5)
    with pytest.raises(ValueError, match="LLaVA-1.5 models only"):
        tokenreduce.patch(qwen, "downsample", keep=0.5)
    with pytest.raises(ValueError, match="LLaVA-1.5 models only"):
        tokenreduce.patch(tiny_llava_next(), "downsample", keep=0.5)
    with pytest.raises(ValueError, match="fall outside the tower"):  # the feature layer is block 1 of 3
        tokenreduce.patch(llava, "vtc-cls", keep=0.5, layers=3)
    with pytest.raises(ValueError, match="first must be in"):
        tokenreduce.patch(llava, "dyvte", keep=0.5, first=4)
    assert [(dict(m._forward_hooks), dict(m._forward_pre_hooks)) for m in llava.modules()] == hooks


@pytest.mark.parametrize(
    "method,params,match",
    [
        ("dart", {"keep": 0.5, "pivots": 0}, "pivots must be in"),
        ("dart", {"keep": 0.5, "text_pivots": -1}, "text_pivots must be in"),
        ("dart", {"keep": 0.5, "layer": 0}, "layer must be in"),
        ("dart", {"keep": 0.5, "pivots": 2.0}, "pivots must be an int"),
        ("vispruner", {"keep": 0.5, "important": 1.5}, "important must be in"),
        ("vispruner", {"keep": 0.5, "step": 0}, "step must be in"),
        ("cdpruner", {"keep": 0.0}, "keep must be in"),
        ("divprune", {"tokens": 0}, "tokens must be a positive int"),
        ("vtc-cls", {"keep": 0.5, "layers": 0}, "layers must be in"),
        ("fopru", {"keep": 0.5, "strategy": "column"}, "strategy must be one of"),
        ("downsample", {"keep": 0.5, "mode": "nearest"}, "mode must be one of"),
        ("dyvte", {"keep": 0.5, "threshold": 1.5}, "threshold must be in"),
        ("dyvte", {"keep": 0.5, "first": 0}, "first must be in"),
        ("mustdrop", {"keep": 0.5, "spatial": -0.1}, "spatial must be in"),
        ("mustdrop", {"keep": 0.5, "layer": True}, "layer must be an int"),
    ],
)
def test_parameters_are_checked_at_construction(method, params, match):
    with pytest.raises(ValueError, match=match):
        make_vlm_method(method, **params)


# ---- independent references --------------------------------------------------------------------------------


def _maxmin_reference(x: torch.Tensor, k: int) -> list[int]:
    """DivPrune written out: cosine distances pair by pair; first the token whose nearest neighbour is farthest,
    then repeatedly the token farthest from its nearest chosen token."""
    n = x.shape[0]
    d = [[1.0 - float(F.cosine_similarity(x[i], x[j], dim=0)) for j in range(n)] for i in range(n)]
    first = max(range(n), key=lambda i: (min(d[i][j] for j in range(n) if j != i), -i))
    chosen = [first]
    while len(chosen) < k:
        rest = [i for i in range(n) if i not in chosen]
        chosen.append(max(rest, key=lambda i: (min(d[i][c] for c in chosen), -i)))
    return chosen


def test_divprune_equals_the_written_out_max_min_greedy():
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(2, 30, (1,), generator=g))
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        x = torch.randn(n, 5, generator=g, dtype=torch.float64)
        ref = _maxmin_reference(x, k)
        assert max_min_greedy(1.0 - F.normalize(x, dim=-1) @ F.normalize(x, dim=-1).T, k).tolist() == ref
        idx, out = make_vlm_method("divprune", tokens=k).reduce(x, (1, n), None, k)
        assert idx.tolist() == sorted(ref) and torch.equal(out, x[idx])


def _dpp_reference(kernel: torch.Tensor, k: int) -> list[int]:
    """Greedy MAP by brute force: each step adds the item maximizing log det of the chosen submatrix."""
    chosen: list[int] = []
    for _ in range(k):
        best, best_val = None, -math.inf
        for j in range(kernel.shape[0]):
            if j in chosen:
                continue
            s = chosen + [j]
            val = float(torch.linalg.slogdet(kernel[s][:, s]).logabsdet)
            if val > best_val + 1e-12:
                best, best_val = j, val
        chosen.append(best)
    return chosen


def test_cdpruner_dpp_greedy_map_equals_brute_force_log_det():
    for seed in range(15):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(2, 14, (1,), generator=g))
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        emb = torch.randn(n, 24, generator=g, dtype=torch.float64)  # full rank: no degenerate steps
        text = torch.randn(3, 24, generator=g, dtype=torch.float64)
        e, t = F.normalize(emb, dim=-1), F.normalize(text, dim=-1)
        rel = (e @ t.T).mean(1)
        rel = (rel - rel.min()) / (rel.max() - rel.min())
        rel = rel * 0.9 + 0.1  # keep every item's quality positive so log det is defined
        kernel = rel[:, None] * (e @ e.T) * rel[None, :]
        assert dpp_greedy_map(kernel, k).tolist() == _dpp_reference(kernel, k)
        # the method's kernel: relevance-scaled cosine similarity
        r = (e @ t.T).mean(1)
        r = (r - r.min()) / (r.max() - r.min())
        torch.testing.assert_close(conditional_kernel(emb, text), r[:, None] * (e @ e.T) * r[None, :])


def _dart_reference(h: torch.Tensor, norms: torch.Tensor, text: torch.Tensor, k: int, pivots: int) -> set[int]:
    """DART written out: pivots = largest norms; each anchor (pivots, then text tokens) in turn takes its share
    of the remaining budget, the free tokens with the lowest cosine to it."""
    n = h.shape[0]
    order = sorted(range(n), key=lambda i: (-float(norms[i]), i))
    piv = order[: min(pivots, k)]
    if k <= len(piv):
        return set(piv)
    anchors = [h[i] for i in piv] + list(text)
    left, free, kept = k - len(piv), [i for i in range(n) if i not in piv], set(piv)
    for a_i, a in enumerate(anchors):
        share = left // len(anchors) + (a_i < left % len(anchors))
        cos = {i: float(F.cosine_similarity(a, h[i], dim=0)) for i in free}
        take = sorted(free, key=lambda i: (cos[i], i))[:share]
        kept.update(take)
        free = [i for i in free if i not in take]
    return kept


def test_dart_selection_equals_the_written_out_reference():
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(3, 30, (1,), generator=g))
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        pivots = int(torch.randint(1, 5, (1,), generator=g))
        h = torch.randn(n, 6, generator=g, dtype=torch.float64)
        text = torch.randn(int(torch.randint(0, 4, (1,), generator=g)), 6, generator=g, dtype=torch.float64)
        norms = torch.rand(n, generator=g, dtype=torch.float64)
        piv = torch.sort(norms, descending=True, stable=True).indices[:pivots]
        anchors = F.normalize(torch.cat([h[piv], text]), dim=-1)
        got = dart_select(anchors @ F.normalize(h, dim=-1).T, piv, k)
        assert len(got) == k and len(set(got.tolist())) == k
        assert set(got.tolist()) == _dart_reference(h, norms, text, k, pivots)


def _vispruner_reference(emb: torch.Tensor, cls: torch.Tensor, k: int, important: float, step: int) -> set[int]:
    ki = min(k, round(important * k))
    order = sorted(range(len(cls)), key=lambda i: (-float(cls[i]), i))
    imp, rest = order[:ki], order[ki:]
    e = F.normalize(emb, dim=-1)
    while len(rest) > k - ki:
        if k - ki == 0:
            rest = []
            break
        a, b = rest[0::2], rest[1::2]
        r = min(step, len(rest) - (k - ki), len(a))
        best = [max(float(e[i] @ e[j]) for j in b) for i in a]
        ranked = sorted(range(len(a)), key=lambda t: (-best[t], t))
        rest = [a[t] for t in ranked[r:]] + b
    return set(imp) | set(rest)


def test_vispruner_equals_the_written_out_reference():
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(2, 40, (1,), generator=g))
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        important = float(torch.rand(1, generator=g))
        emb = torch.randn(n, 5, generator=g, dtype=torch.float64)
        cls = torch.rand(n, generator=g)
        idx, out = make_vlm_method("vispruner", tokens=k, important=important, step=3).reduce(emb, (1, n), cls, k)
        assert len(idx) == k and set(idx.tolist()) == _vispruner_reference(emb, cls, k, important, 3)


def _kept_visual(model, x, method) -> list[int]:
    with tokenreduce.patched(model, method):
        cols = get_state(model(**x, use_cache=True).cache).cols[0][0]
    start = int((x["input_ids"][0] == model.config.image_token_id).nonzero().min())
    vis = x["input_ids"][0][cols] == model.config.image_token_id
    return (cols[vis] - start).tolist()


@torch.no_grad()
def test_tower_scores_equal_the_towers_own_eager_attention(llava):
    """VTC-CLS (summed [CLS] rows of the last 2 blocks up to the feature layer) and FoPru (attention received
    in the feature layer, summed over every query) keep the top tokens of the eager tower's attention maps."""
    x = llava_inputs(llava)
    eager = tiny_llava(impl="eager")
    att = eager.model.vision_tower(x["pixel_values"], output_attentions=True).attentions
    f = llava.config.vision_feature_layer % (len(att) + 1) - 1
    vtc = sum(att[b][0, :, 0, 1:].mean(0) for b in (f - 1, f))
    fopru = att[f][0].mean(0).sum(0)[1:]
    for method, score in ((make_vlm_method("vtc-cls", tokens=9, layers=2), vtc),
                          (make_vlm_method("fopru", tokens=9), fopru)):
        ref = torch.sort(torch.sort(score, descending=True, stable=True).indices[:9]).values
        assert _kept_visual(llava, x, method) == ref.tolist()
    rows = make_vlm_method("fopru", tokens=12, strategy="row")
    best = torch.sort(fopru.view(8, 8).sum(1), descending=True, stable=True).indices
    full = [int(best[0]) * 8 + c for c in range(8)]
    part = int(best[1]) * 8 + torch.sort(fopru.view(8, 8)[best[1]], descending=True, stable=True).indices[:4]
    assert _kept_visual(llava, x, rows) == sorted(full + part.tolist())


@torch.no_grad()
@pytest.mark.parametrize("mode", ["area", "bilinear"])
def test_downsample_equals_pooling_before_the_projector(mode, llava):
    """The LLM sees the unpatched tower's features pooled to the budget's grid, then projected (a reference
    built from the model's own modules), one token per cell at the cell's centre position."""
    x = llava_inputs(llava)
    cfg = llava.config
    tower = llava.model.vision_tower(x["pixel_values"], output_hidden_states=True)
    feats = tower.hidden_states[cfg.vision_feature_layer][:, 1:]  # (1, 64, C)
    grid = feats.transpose(1, 2).reshape(1, -1, 8, 8)
    a, b = tokenreduce.vlm.reduce.pool_shape(8, 8, 12)
    assert a * b == 12
    pooled = (F.adaptive_avg_pool2d(grid, (a, b)) if mode == "area"
              else F.interpolate(grid, size=(a, b), mode="bilinear", align_corners=False, antialias=True))
    ref = llava.model.multi_modal_projector(pooled.flatten(2).transpose(1, 2))[0]  # (12, hidden)
    seen: dict = {}

    def grab(module, args, kwargs):
        seen.setdefault("h", kwargs.get("hidden_states", args[0] if args else None))

    with tokenreduce.patched(llava, "downsample", tokens=12, mode=mode):
        h = llava.model.language_model.layers[0].register_forward_pre_hook(grab, with_kwargs=True)
        try:
            cols = get_state(llava(**x, use_cache=True).cache).cols[0][0]
        finally:
            h.remove()
    start = int((x["input_ids"][0] == cfg.image_token_id).nonzero().min())
    vis = x["input_ids"][0][cols] == cfg.image_token_id

    def mid(i, cells):  # the middle patch of adaptive-pooling cell i of 8 patches: [floor(8i/c), ceil(8(i+1)/c))
        lo, hi = (8 * i) // cells, -((-8 * (i + 1)) // cells)
        return (lo + hi - 1) // 2

    centres = [mid(i, a) * 8 + mid(j, b) for i in range(a) for j in range(b)]
    assert (cols[vis] - start).tolist() == centres
    torch.testing.assert_close(seen["h"][0, vis], ref, rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def llava_next():
    return tiny_llava_next()


@torch.no_grad()
@pytest.mark.parametrize("method", [m for m in NEW if m != "downsample"])
def test_llava_next_keep_all_is_exact_and_a_budget_shortens_every_crop(method, llava_next):
    from vlm_models import llava_next_inputs

    x = llava_next_inputs(llava_next)
    ref = llava_next(**x).logits
    with tokenreduce.patched(llava_next, method, keep=1.0):
        assert torch.equal(llava_next(**x).logits, ref)
    with tokenreduce.patched(llava_next, method, keep=0.3):
        cols = get_state(llava_next(**x, use_cache=True).cache).cols
    n = x["input_ids"].shape[1]
    assert cols[-1].shape[1] < n and all(c.shape[1] <= n for c in cols)


@torch.no_grad()
def test_dynamic_exit_rows_leaving_at_different_layers_equal_rows_alone(llava):
    """A threshold that one row's attention falls below and the other's does not: alone, the rows exit at
    different layers; in one batch the early row's visual tokens are masked out instead of dropped, so each
    row's logits and greedy tokens equal its own (and every layer's cache still stands for the right tokens)."""
    rows = [llava_inputs(llava, seed=s) for s in (1, 2)]

    def exits_first(x, t):
        return _visual_per_layer(llava, x, make_vlm_method("dyvte", tokens=60, threshold=t))[1] == 0

    def mass(x):  # the threshold where the row starts exiting before layer 1 (bisection)
        lo, hi = 0.0, 1.0
        for _ in range(12):
            lo, hi = (lo, (lo + hi) / 2) if exits_first(x, (lo + hi) / 2) else ((lo + hi) / 2, hi)
        return hi

    a, b = mass(rows[0]), mass(rows[1])
    assert abs(a - b) > 1e-3
    split = (a + b) / 2
    assert exits_first(rows[0], split) != exits_first(rows[1], split)
    batch = {k: torch.cat([r[k] for r in rows]) for k in rows[0]}
    n = batch["input_ids"].shape[1]
    with tokenreduce.patched(llava, "dyvte", tokens=60, threshold=split):
        both = llava(**batch).logits[:, -1]
        singles = torch.cat([llava(**r).logits[:, -1] for r in rows])
        g_both = llava.generate(**batch, max_new_tokens=5, do_sample=False)[:, n:]
        g_single = [llava.generate(**r, max_new_tokens=5, do_sample=False)[0, n:] for r in rows]
    torch.testing.assert_close(both, singles, rtol=1e-4, atol=1e-5)
    assert g_both.tolist() == [g.tolist() for g in g_single]
