"""Core tensor functions against straightforward loop implementations (small, exhaustive)."""

from __future__ import annotations

import itertools

import pytest
import torch

from tokenreduce.core.assign import apply_assignment, compact, gather_assignment, restore, update_sources
from tokenreduce.core.merge import bipartite_soft_matching
from tokenreduce.core.noise import hash_uniform
from tokenreduce.core.prune import topk_assignment


def reference_tome(metric, x, sizes, r, lengths, protected):
    """Per-row, loop-based ToMe: returns per row a list of groups (lists of original indices) in
    output order, and the merged features/sizes. Written independently of the vectorized code."""
    rows = []
    for b in range(x.shape[0]):
        n = int(lengths[b])
        unprot = list(range(protected, n))
        a_set, b_set = unprot[0::2], unprot[1::2]
        rr = min(int(r[b]), len(unprot) // 2)
        best = []
        for a in a_set if b_set else []:
            sims = [torch.nn.functional.cosine_similarity(metric[b, a], metric[b, j], dim=0).item() for j in b_set]
            j = max(range(len(sims)), key=lambda k: (sims[k], -k))  # first max
            best.append((sims[j], a, b_set[j]))
        order = sorted(range(len(best)), key=lambda i: (-best[i][0], i))
        merged = {best[i][1]: best[i][2] for i in order[:rr]}
        groups = {t: [t] for t in range(n) if t not in merged}
        for a, tgt in merged.items():
            groups[tgt].append(a)
        out = []
        for t in sorted(groups):
            g = sorted(groups[t])
            s = sum(float(sizes[b, i]) for i in g)
            v = sum(x[b, i] * sizes[b, i] for i in g) / s
            out.append((g, v, s))
        rows.append(out)
    return rows


@pytest.mark.parametrize("n,protected,r", list(itertools.product([2, 3, 6, 9, 10], [0, 1, 2], [0, 1, 2, 3, 5])))
def test_bipartite_matching_matches_reference(n, protected, r):
    if protected >= n:
        pytest.skip("nothing to merge")
    g = torch.Generator().manual_seed(n * 100 + protected * 10 + r)
    lengths = torch.tensor([n, max(protected + 1, n - 2), n])
    width = n
    metric = torch.randn(3, width, 5, generator=g)
    x = torch.randn(3, width, 4, generator=g, dtype=torch.float64)
    valid = torch.arange(width)[None] < lengths[:, None]
    sizes = torch.where(valid, torch.randint(1, 4, (3, width), generator=g).double(), 0.0)
    rvec = torch.tensor([r, r, 0])
    dst, n_out = bipartite_soft_matching(metric, rvec, valid, protected)
    out, out_sizes = apply_assignment(x, sizes, dst, n_out)
    ref = reference_tome(metric, x, sizes, rvec, lengths, protected)
    assert n_out == max(len(rows) for rows in ref)
    for b, groups in enumerate(ref):
        for slot, (members, value, size) in enumerate(groups):
            assert sorted(torch.nonzero(dst[b] == slot).flatten().tolist()) == members
            torch.testing.assert_close(out[b, slot], value)
            assert out_sizes[b, slot].item() == size
        assert (out_sizes[b, len(groups) :] == 0).all()  # padding stays padding
        assert (dst[b, int(lengths[b]) :] < 0).all() or (dst[b, int(lengths[b]) :] >= len(groups)).all()
        assert dst[b, :protected].tolist() == list(range(protected))  # protected tokens keep their slots


def test_merge_never_exceeds_half_and_pads_never_merge():
    metric = torch.randn(2, 8, 3)
    valid = torch.tensor([[1] * 8, [1] * 5 + [0] * 3]).bool()
    dst, n_out = bipartite_soft_matching(metric, torch.tensor([100, 100]), valid, 1)
    kept = [len(set(dst[b][valid[b]].tolist())) for b in range(2)]
    assert kept == [8 - 3, 5 - 2]
    assert n_out == 5
    assert all(d >= kept[1] or d < 0 for d in dst[1, 5:].tolist())


def test_compact_orders_kept_then_padding():
    keep = torch.tensor([[1, 0, 1, 1, 0], [1, 1, 0, 0, 0]]).bool()
    valid = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]).bool()
    slot, n_out = compact(keep, valid)
    assert n_out == 3
    assert slot.tolist() == [[0, -1, 1, 2, -1], [0, 1, -1, 2, -1]]


@pytest.mark.parametrize("fuse", [False, True])
def test_topk_assignment_reference(fuse):
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        n = int(torch.randint(3, 12, (1,), generator=g))
        scores = torch.rand(2, n, generator=g)
        valid = torch.ones(2, n, dtype=torch.bool)
        valid[1, n - 1 :] = False
        drop = torch.randint(0, n, (2,), generator=g)
        dst, n_out, fused = topk_assignment(scores, drop, valid, protected=1, fuse=fuse)
        for b in range(2):
            cand = [i for i in range(1, n) if valid[b, i]]
            k = min(int(drop[b]), len(cand))
            if fuse and k == 1:
                k = 0
            dropped = sorted(sorted(cand, key=lambda i: (scores[b, i].item(), i))[:k])
            kept = [i for i in range(n) if valid[b, i] and i not in dropped]
            if fuse and dropped:
                anchor_pos = sorted(kept + dropped[:1])
                expect = {i: anchor_pos.index(i) for i in kept}
                expect.update({i: anchor_pos.index(dropped[0]) for i in dropped})
            else:
                expect = {i: kept.index(i) for i in kept}
                expect.update({i: -1 for i in dropped})
            got = {i: int(dst[b, i]) for i in range(n) if valid[b, i]}
            assert got == expect
            assert fused[b].sum().item() == (len(dropped) if fuse else 0)


def test_gather_assignment_is_exact_and_sources_restore():
    x = torch.randn(2, 6, 3)
    keep = torch.tensor([[1, 1, 0, 1, 0, 1], [1, 0, 1, 1, 1, 1]]).bool()
    dst, n_out = compact(keep, torch.ones(2, 6, dtype=torch.bool))
    y = gather_assignment(x, dst, n_out)
    assert torch.equal(y[0, :4], x[0, [0, 1, 3, 5]]) and (y[0, 4] == 0).all()
    assert torch.equal(y[1, :5], x[1, [0, 2, 3, 4, 5]])
    src = update_sources(torch.arange(6).expand(2, 6), dst)
    full = restore(y, src)
    assert torch.equal(full[keep], x[keep])
    assert (full[~keep] == 0).all()


def test_hash_uniform_is_deterministic_and_spread():
    pos = torch.arange(4096)
    a, b = hash_uniform(pos, 0, 3), hash_uniform(pos, 0, 3)
    assert torch.equal(a, b)
    assert not torch.equal(a, hash_uniform(pos, 1, 3))
    assert 0.0 <= float(a.min()) and float(a.max()) < 1.0
    assert abs(float(a.mean()) - 0.5) < 0.02
