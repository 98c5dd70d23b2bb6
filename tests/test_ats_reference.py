"""ATS against an independent, straightforward implementation of the authors' rule.

The reference below is written from the paper and the authors' code (adaptivetokensampling/ATS,
``score_assignment_step`` and ``inverse_transform_sampling``), one row at a time with Python
lists: significance = [CLS] attention summed over heads × norm of the concatenated value vector,
normalized over the non-[CLS] tokens; ascending sort; cumulative sum; min-max normalized CDF;
K points ``y0 + i (1 - y0) / (K - 1)`` from the smallest non-zero CDF value ``y0`` to 1; each point
picks the token with the nearest CDF value (the first on ties); duplicates collapse.
"""

from __future__ import annotations

import math

import pytest
import torch

from tokenreduce.bench.vision_testbed import DigitsTestbed
from tokenreduce.encoder.adapters import patch, unpatch
from tokenreduce.encoder.adapters.runner import record_sources
from tokenreduce.encoder.methods import LayerTensors, make_method
from tokenreduce.encoder.methods.ats import nearest_cdf_sample, significance


def reference_significance(attn, values, n):
    """attn (H, N, N) probabilities, values (H, N, d); first n tokens real. Returns n floats."""
    heads = attn.shape[0]
    out = []
    for j in range(n):
        a = sum(float(attn[h, 0, j]) for h in range(heads))
        v = math.sqrt(sum(float(values[h, j, c]) ** 2 for h in range(heads) for c in range(values.shape[2])))
        out.append(a * v)
    return out


def reference_keep(scores, tokens, k):
    """The authors' sampler on one row: the kept subset of ``tokens`` (indices) for K = k points."""
    if k == 0 or not tokens:
        return set()
    vals = [max(scores[j], 0.0) for j in tokens]
    if sum(vals) == 0:
        vals = [1.0] * len(vals)
    total = sum(vals)
    ranked = sorted(zip([v / total for v in vals], tokens), key=lambda p: (p[0], p[1]))
    if len(ranked) == 1:
        return {ranked[0][1]}
    cdf, acc = [], 0.0
    for v, _ in ranked:
        acc += v
        cdf.append(acc)
    lo, hi = cdf[0], cdf[-1]
    if hi == lo:
        norm = [0.0] * len(cdf)
    else:
        norm = [(c - lo) / (hi - lo) for c in cdf]
    nonzero = [c for c in norm if c > 0]
    y0 = min(nonzero) if nonzero else 1.0
    ys = [1.0] if k == 1 else [y0 + i * (1 - y0) / (k - 1) for i in range(k)]
    kept = set()
    for y in ys:
        dist = [abs(y - c) for c in norm]
        kept.add(ranked[dist.index(min(dist))][1])
    return kept


def _row_close(a, b, tol=1e-9):
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


@pytest.mark.parametrize("seed", range(16))
def test_sampler_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    b, n = 5, int(torch.randint(2, 40, (1,), generator=g))
    scores = torch.rand(b, n, generator=g) ** 4  # skewed: duplicates collapse
    if seed % 4 == 0:
        scores = scores.round(decimals=1)  # ties and zeros
    if seed % 4 == 1:
        scores[0] = 0.0  # an all-zero row samples its candidates as equal
    lengths = torch.randint(1, n + 1, (b,), generator=g)
    cand = (torch.arange(n)[None] < lengths[:, None]) & (torch.arange(n)[None] >= 1)
    k = torch.randint(0, n + 3, (b,), generator=g)
    got = nearest_cdf_sample(scores, cand, k)
    for r in range(b):
        toks = [j for j in range(n) if cand[r, j]]
        want = reference_keep([float(s) for s in scores[r].double()], toks, int(k[r]))
        assert {j for j in range(n) if got[r, j]} == want, (r, int(k[r]))


def test_significance_matches_reference():
    g = torch.Generator().manual_seed(0)
    b, h, n, d = 2, 3, 9, 4
    attn = torch.randn(b, h, n, n, generator=g).softmax(-1)
    values = torch.randn(b, h, n, d, generator=g)
    got = significance(attn[:, :, 0], values)
    for r in range(b):
        want = reference_significance(attn[r], values[r], n)
        assert all(_row_close(float(x), y, 1e-5) for x, y in zip(got[r], want))


@pytest.mark.parametrize("seed", range(4))
def test_plan_equals_reference_on_the_same_inputs(seed):
    """The method's plan on one layer's tensors keeps exactly the reference's tokens (+ [CLS])."""
    g = torch.Generator().manual_seed(seed)
    b, h, n, d = 3, 2, 17, 4
    lengths = torch.tensor([17, 12, 4])
    valid = torch.arange(n)[None] < lengths[:, None]
    attn = torch.randn(b, h, n, n, generator=g).mul(3).masked_fill(~valid[:, None, None], -1e9).softmax(-1)
    values = torch.randn(b, h, n, d, generator=g)
    target = torch.tensor([10, 3, 3])
    t = LayerTensors(x=torch.randn(b, n, 8, generator=g), sizes=valid.float(), keys=None, cls_attn=None, layer=1,
                     protected=1, cls_attn_heads=attn[:, :, 0], values=values, target=target)
    plan = make_method("ats", keep=0.5).plan(t, torch.tensor([5, 5, 0]))
    for r in range(b):
        ln = int(lengths[r])
        sig = reference_significance(attn[r], values[r], ln)
        want = reference_keep(sig, list(range(1, ln)), int(target[r])) if r < 2 else set(range(1, ln))
        assert {j for j in range(ln) if plan.dst[r, j] >= 0} == {0} | want


def test_start_quarter_of_the_depth():
    """Reduction begins at ceil(start · depth): layer 2 of 6 by default, like the authors' block 3 of 12."""
    m = make_method("ats", keep=0.5)
    rem = m.budget().removals_static(64, 6, cap=m.cap)
    assert rem[:2] == [0, 0] and all(r > 0 for r in rem[2:]) and sum(rem) == 32
    assert make_method("ats", keep=0.5).budget().removals_static(196, 12, cap=0.9)[:3] == [0, 0, 0]
    assert make_method("ats", keep=0.5, start=0.0).budget().removals_static(64, 6, cap=0.9)[0] > 0
    assert make_method("ats", keep=0.5, layers=(0, 1)).budget().removals_static(64, 6, cap=0.9)[2:] == [0] * 4
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="start"):
            make_method("ats", keep=0.5, start=bad)


@pytest.mark.slow
def test_digits_accuracy_close_to_other_methods():
    """On the bundled digits ViT at keep 0.7, ATS loses < 3 points (it lost 34 starting at layer 0),
    while keeping fewer tokens than its nominal budget."""
    tb = DigitsTestbed()
    got = tb.score("ats", keep=0.7)
    assert got["accuracy"] >= tb.base["accuracy"] - 0.03
    old = tb.score("ats", keep=0.7, start=0.0)
    assert old["accuracy"] < tb.base["accuracy"] - 0.2  # the failure mode: sampling from the first block
    m = make_method("ats", keep=0.7)
    patch(tb.model, m)
    try:
        with record_sources() as recs, torch.inference_mode():
            tb.model(pixel_values=tb.pixels[:64])
    finally:
        unpatch(tb.model)
    assert [r.layer for r in recs] == [2, 3, 4, 5]
