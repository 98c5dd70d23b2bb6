"""MCTF's multi-criteria weights and bidirectional matching against a loop implementation."""

from __future__ import annotations

import pytest
import torch

from tokenreduce.core.assign import apply_assignment
from tokenreduce.encoder.methods import LayerTensors, make_method


def cos(u, v):
    return float(u @ v) / max(float(u.norm()) * float(v.norm()), 1e-12)


def reference(x, attn, sizes, lengths, protected, r, tau):
    """Per row: {members} groups and the attention-received × size weights, by explicit loops."""
    rows = []
    for b in range(x.shape[0]):
        n = int(lengths[b])
        toks = list(range(protected, n))
        heads = attn.shape[1]
        recv = {j: sum(float(attn[b, h, i, j]) for h in range(heads) for i in range(n)) / heads / n for j in range(n)}
        inv_a = {j: 1 / recv[j] for j in toks}
        inv_s = {j: 1 / float(sizes[b, j]) for j in toks}
        ma, ms = max(inv_a.values()), max(inv_s.values())

        def w(i, j, b=b, inv_a=inv_a, inv_s=inv_s, ma=ma, ms=ms):
            sim = ((cos(x[b, i], x[b, j]) + 1) / 2) ** (1 / tau[0])
            info = (inv_a[i] / ma * inv_a[j] / ma) ** (1 / tau[1])
            size = (inv_s[i] / ms * inv_s[j] / ms) ** (1 / tau[2])
            return sim * info * size

        a_set, b_set = toks[0::2], toks[1::2]
        rr = min(int(r[b]), len(toks) // 2)
        r1, r2 = rr // 2, rr - rr // 2
        best_a = {i: max(((w(i, j), -j) for j in b_set), default=None) for i in a_set}
        ranked = sorted((i for i in a_set if best_a[i]), key=lambda i: (-best_a[i][0], i))
        step1 = {i: -best_a[i][1] for i in ranked[:r1]}
        left = [i for i in a_set if i not in step1]
        best_b = {j: max((w(i, j), -i) for i in left) for j in b_set}
        ranked_b = sorted(b_set, key=lambda j: (-best_b[j][0], j))
        step2 = {j: -best_b[j][1] for j in ranked_b[:r2]}
        root = {}
        for t in range(n):
            d = step1.get(t, t)
            d = step2.get(d, d)
            root[t] = d
        groups = {}
        for t, d in root.items():
            groups.setdefault(d, []).append(t)
        rows.append((sorted(map(sorted, groups.values())), recv))
    return rows


@pytest.mark.parametrize("seed", range(8))
def test_mctf_plan_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n, protected, h = 14, 1 + seed % 2, 3
    lengths = torch.tensor([n, n - 3, protected + 4])
    valid = torch.arange(n)[None] < lengths[:, None]
    x = torch.randn(3, n, 5, generator=g, dtype=torch.float64)
    logits = torch.randn(3, h, n, n, generator=g).masked_fill(~valid[:, None, None, :], float("-inf"))
    attn = logits.softmax(-1).double()
    sizes = torch.where(valid, torch.randint(1, 5, (3, n), generator=g).double(), 0.0)
    r = torch.tensor([5, 4, 9])
    tau = (1.0, 2.0, 3.0)
    m = make_method("mctf", r=1, tau_sim=tau[0], tau_info=tau[1], tau_size=tau[2])
    t = LayerTensors(x=x, sizes=sizes, keys=None, cls_attn=None, layer=0, protected=protected, attn=attn)
    plan = m.plan(t, r)
    out, out_sizes = apply_assignment(x, sizes, plan.dst, plan.n_out, plan.weights)
    for b, (groups, recv) in enumerate(reference(x, attn, sizes, lengths, protected, r, tau)):
        got = {}
        for i in range(int(lengths[b])):
            got.setdefault(int(plan.dst[b, i]), []).append(i)
        assert sorted(map(sorted, got.values())) == groups
        assert len(groups) == int(lengths[b]) - min(int(r[b]), (int(lengths[b]) - protected) // 2)
        for members in groups:
            slot = int(plan.dst[b, members[0]])
            wts = [recv[i] * float(sizes[b, i]) if i >= protected else float(sizes[b, i]) for i in members]
            want = sum(x[b, i] * wt for i, wt in zip(members, wts)) / sum(wts)
            torch.testing.assert_close(out[b, slot], want)
            assert float(out_sizes[b, slot]) == sum(float(sizes[b, i]) for i in members)
