"""ATS sampling against a loop implementation of inverse-transform sampling, and its count bounds."""

from __future__ import annotations

import pytest
import torch

from tokenreduce.core.scoring import ats_significance, inverse_cdf_sample


def reference_sample(scores, cand, k):
    """Per row: sort candidates by (score, position), walk the CDF for each point (2i+1)/2k."""
    keep = torch.zeros_like(cand)
    for b in range(scores.shape[0]):
        toks = sorted((float(scores[b, i]), i) for i in range(scores.shape[1]) if cand[b, i])
        kb = int(k[b])
        if not toks or kb == 0:
            continue
        vals = [max(s, 0.0) for s, _ in toks]
        total = sum(vals)
        cdf, acc = [], 0.0
        for j, v in enumerate(vals):
            acc += v
            cdf.append(acc / total if total > 0 else (j + 1) / len(vals))
        for i in range(kb):
            u = (2 * i + 1) / (2 * kb)
            j = next((j for j, c in enumerate(cdf) if c >= u), len(cdf) - 1)
            keep[b, toks[j][1]] = True
    return keep


@pytest.mark.parametrize("seed", range(12))
def test_inverse_cdf_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    b, n = 4, int(torch.randint(3, 30, (1,), generator=g))
    scores = torch.rand(b, n, generator=g) ** 3  # skewed, so duplicates collapse
    if seed % 3 == 0:
        scores = scores.round(decimals=1)  # ties, broken by position
    lengths = torch.randint(1, n + 1, (b,), generator=g)
    cand = (torch.arange(n)[None] < lengths[:, None]) & (torch.arange(n)[None] >= 1)
    k = torch.randint(0, n + 3, (b,), generator=g)
    got = inverse_cdf_sample(scores, cand, k)
    assert torch.equal(got, reference_sample(scores, cand, k))


def test_count_bounds():
    n = 40
    cand = torch.ones(5, n, dtype=torch.bool)
    cand[:, 0] = False
    cand[4, 30:] = False
    k = torch.tensor([10, 39, 60, 1, 25])
    uniform = inverse_cdf_sample(torch.ones(5, n), cand, k)
    assert uniform.sum(1).tolist() == [10, 39, 39, 1, 25]  # equal scores: exactly min(K, candidates)
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        s = torch.rand(5, n, generator=g) ** 8
        kept = inverse_cdf_sample(s, cand, k).sum(1)
        assert (kept >= 1).all() and (kept <= torch.minimum(k, cand.sum(1))).all()
    peaked = torch.full((5, n), 1e-6)
    peaked[:, 3] = 1.0
    assert inverse_cdf_sample(peaked, cand, k).sum(1).tolist() == [1, 1, 1, 1, 1]  # one token dominates
    assert not inverse_cdf_sample(peaked, cand, torch.zeros(5, dtype=torch.long)).any()
    assert not inverse_cdf_sample(peaked, cand, k)[:, 0].any()  # non-candidates are never picked


def test_significance_is_cls_attention_times_value_norm_summed_over_heads():
    g = torch.Generator().manual_seed(1)
    a, v = torch.rand(2, 3, 7, generator=g), torch.randn(2, 3, 7, 5, generator=g)
    got = ats_significance(a, v)
    for b in range(2):
        for j in range(7):
            want = sum(float(a[b, h, j]) * float(v[b, h, j].norm()) for h in range(3))
            assert abs(float(got[b, j]) - want) < 1e-5
