"""VLM methods as units: visual ToMe on the shared core matching equals the former per-image float64 loop,
the grouped top-k equals a per-group loop, and every method validates its parameters at construction."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from tokenreduce.vlm import make_vlm_method, reduce, vlm_methods
from tokenreduce.vlm.methods import Unit


def _tome_reference(emb, k):
    """The former per-image implementation: float64, one image, one bipartite round at a time."""
    idx = torch.arange(emb.shape[0])
    x, size = emb.double(), torch.ones(emb.shape[0], dtype=torch.float64)
    while x.shape[0] > k:
        a, b = torch.arange(0, x.shape[0], 2), torch.arange(1, x.shape[0], 2)
        r = min(x.shape[0] - k, len(a), len(b))
        xn = F.normalize(x, dim=-1)
        best_val, best = (xn[a] @ xn[b].T).max(dim=1)
        merged_a = torch.sort(best_val, descending=True, stable=True).indices[:r]
        stay = torch.ones(len(a), dtype=torch.bool)
        stay[merged_a] = False
        xb, sb = x[b] * size[b, None], size[b].clone()
        xb.index_add_(0, best[merged_a], x[a[merged_a]] * size[a[merged_a], None])
        sb.index_add_(0, best[merged_a], size[a[merged_a]])
        keep_idx = torch.cat([idx[a[stay]], idx[b]])
        keep_x = torch.cat([x[a[stay]], xb / sb[:, None]])
        keep_s = torch.cat([size[a[stay]], sb])
        order = torch.argsort(keep_idx)
        idx, x, size = keep_idx[order], keep_x[order], keep_s[order]
    return idx, x.to(emb.dtype)


def _no_near_ties(emb, k, gap=1e-4):
    """True if, in every round of the reference, the similarities that decide the merges are >= gap apart
    (so float32 and float64 make the same choices)."""
    x = emb.double()
    while x.shape[0] > k:
        xn = F.normalize(x, dim=-1)
        sim = xn[0::2] @ xn[1::2].T
        top2 = sim.topk(min(2, sim.shape[1]), dim=1).values
        if sim.shape[1] > 1 and (top2[:, 0] - top2[:, 1]).min() < gap:
            return False
        best = torch.sort(top2[:, 0], descending=True).values
        if len(best) > 1 and (best[:-1] - best[1:]).min() < gap:
            return False
        _, x = _tome_reference(x, x.shape[0] - min(x.shape[0] - k, x.shape[0] // 2))
    return True


def test_visual_tome_on_core_matching_equals_the_per_image_float64_loop():
    """Same kept indices and (to float32 rounding) the same merged embeddings as the former loop. The
    library matches in float32, the reference in float64: inputs with near-ties (< 1e-4 apart) are skipped,
    since there the two precisions may break the tie differently."""
    checked = 0
    for seed in range(60):
        g = torch.Generator().manual_seed(seed)
        n = int(torch.randint(2, 40, (1,), generator=g))
        k = int(torch.randint(1, n + 1, (1,), generator=g))
        emb = torch.randn(n, 6, generator=g)
        if not _no_near_ties(emb, k):
            continue
        idx, out = reduce.bipartite_merge(emb, k)
        ref_idx, ref_out = _tome_reference(emb, k)
        assert torch.equal(idx, ref_idx)
        torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-6)
        checked += 1
    assert checked >= 40


def test_visual_tome_batches_images_of_one_size_as_single_images():
    g = torch.Generator().manual_seed(3)
    m = make_vlm_method("visual-tome", tokens=5)
    units = [Unit(torch.randn(n, 4, generator=g), (1, n), None, k) for n, k in ((12, 5), (9, 4), (12, 5), (12, 3))]
    for (idx, out), u in zip(m.reduce_all(units), units, strict=True):
        ref_idx, ref_out = m.reduce(u.emb, u.grid, None, u.k)
        assert torch.equal(idx, ref_idx) and len(idx) == u.k
        torch.testing.assert_close(out, ref_out, rtol=1e-6, atol=1e-6)


def test_keep_top_in_groups_equals_a_loop_per_group():
    g = torch.Generator().manual_seed(0)
    group = torch.tensor([[-1, 0, 0, 1, 1, 1, -1, 0, 2], [-1, 3, 3, 4, 4, 4, -1, 3, 5]])
    quota = torch.tensor([2, 1, 5, 1, 3, 0])
    scores = torch.rand(2, 9, generator=g)
    keep = reduce.keep_top_in_groups(group, scores, quota)
    for b in range(2):
        want = group[b] < 0
        for gid in group[b].unique().tolist():
            if gid >= 0:
                pos = (group[b] == gid).nonzero().squeeze(1)
                want[pos[reduce.top_k(scores[b, pos], min(int(quota[gid]), len(pos)))]] = True
        assert torch.equal(keep[b], want)


@pytest.mark.parametrize(
    "method,params,match",
    [
        ("fastv", {"keep": "0.5"}, "keep must be a real number"),
        ("fastv", {"keep": math.nan}, "keep must be a real number"),
        ("fastv", {"keep": 0.0}, "keep must be in"),
        ("fastv", {"tokens": True}, "tokens must be a positive int"),
        ("fastv", {"tokens": 2.0}, "tokens must be a positive int"),
        ("fastv", {"keep": 0.5, "layer": True}, "layer must be an int"),
        ("fastv", {"keep": 0.5, "layer": 0}, "layer must be in"),
        ("text-guided", {"keep": 0.5, "layer": "2"}, "layer must be an int"),
        ("pdrop", {"keep": 0.5, "ratio": 0.0}, "ratio must be in"),
        ("pdrop", {"keep": 0.5, "ratio": "half"}, "ratio must be a real number"),
        ("pdrop", {"keep": 0.5, "layers": (3, 1)}, "strictly increasing"),
        ("pdrop", {"keep": 0.5, "layers": (1, 2.5)}, "tuple of ints"),
        ("visionzip", {"keep": 0.5, "dominant": 1.5}, "dominant must be in"),
        ("visionzip", {"keep": 0.5, "dominant": math.inf}, "dominant must be a real number"),
        ("fastervlm", {"keep": 0.5, "thumbnail_guidance": 1}, "thumbnail_guidance must be a bool"),
        ("visual-random", {"keep": 0.5, "seed": -1}, "seed must be in"),
        ("visual-random", {"keep": 0.5, "seed": 1.0}, "seed must be an int"),
    ],
)
def test_parameters_are_checked_at_construction(method, params, match):
    with pytest.raises(ValueError, match=match):
        make_vlm_method(method, **params)


def test_every_method_is_its_own_module_with_a_paper_or_baseline_docstring():
    import importlib

    for name in vlm_methods():
        cls = type(make_vlm_method(name, keep=0.5))
        module = importlib.import_module(cls.__module__)
        packages = ("tokenreduce.vlm.methods.", "tokenreduce.vlm.video.methods.")
        assert module.__name__.startswith(packages) and module.__doc__
        assert sum(getattr(v, "name", None) == name for v in vars(module).values() if isinstance(v, type)) == 1
