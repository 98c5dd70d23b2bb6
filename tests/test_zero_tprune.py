"""Zero-TPrune's PageRank and two-stage pruning against loop implementations."""

from __future__ import annotations

import pytest
import torch

from tokenreduce.core.scoring import weighted_pagerank
from tokenreduce.encoder.methods import LayerTensors, make_method


def cos(u, v):
    return float(u @ v) / max(float(u.norm()) * float(v.norm()), 1e-12)


def reference_pagerank(attn, n, iters):
    """Per head: s_j <- sum_i s_i A_ij over the first n (real) tokens, from s = 1/n."""
    heads = attn.shape[0]
    out = []
    for h in range(heads):
        s = [1.0 / n] * n
        for _ in range(iters):
            s = [sum(s[i] * float(attn[h, i, j]) for i in range(n)) for j in range(n)]
        out.append(s)
    return out


def attention(g, b, h, n, lengths):
    valid = torch.arange(n)[None] < lengths[:, None]
    logits = 3 * torch.randn(b, h, n, n, generator=g)
    return logits.masked_fill(~valid[:, None, None, :], float("-inf")).softmax(-1), valid


def test_pagerank_matches_reference():
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([9, 6])
    attn, valid = attention(g, 2, 3, 9, lengths)
    got = weighted_pagerank(attn, valid, 4)
    for b in range(2):
        n = int(lengths[b])
        ref = reference_pagerank(attn[b], n, 4)
        torch.testing.assert_close(got[b, :, :n], torch.tensor(ref), atol=1e-6, rtol=1e-5)
        assert (got[b, :, n:] == 0).all()
        torch.testing.assert_close(got[b].sum(-1), torch.ones(3))  # mass is conserved on real tokens


@pytest.mark.parametrize("seed", range(6))
def test_plan_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n, h, protected, iters, share = 15, 2, 1, 3, [0.5, 1.0, 0.0][seed % 3]
    lengths = torch.tensor([n, n - 5, 5])
    attn, valid = attention(g, 3, h, n, lengths)
    keys = torch.randn(3, n, 4, generator=g)
    r = torch.tensor([9, 4, 3])
    m = make_method("zero-tprune", r=1, iters=iters, similarity_share=share)
    t = LayerTensors(x=keys, sizes=valid.float(), keys=keys, cls_attn=None, layer=0, protected=protected, attn=attn)
    plan = m.plan(t, r)
    for b in range(3):
        ln = int(lengths[b])
        imp_h = reference_pagerank(attn[b], ln, iters)
        imp = {j: sum(imp_h[k][j] for k in range(h)) / h for j in range(ln)}
        toks = list(range(protected, ln))
        rr = min(int(r[b]), len(toks))
        r_sim = min(round(rr * share), len(toks) - rr)
        order = sorted(toks, key=lambda j: (imp[j], j))
        rest = order[rr - r_sim :]
        half = len(rest) // 2
        a_set, b_set = rest[:half], rest[half:]
        best = {i: max(cos(keys[b, i], keys[b, j]) for j in b_set) for i in a_set}
        second = sorted(a_set, key=lambda i: (-best[i], i))[:r_sim]
        kept = [j for j in range(ln) if j < protected or (j in rest and j not in second)]
        assert [j for j in range(ln) if plan.dst[b, j] >= 0] == kept
        assert [int(plan.dst[b, j]) for j in kept] == list(range(len(kept)))
