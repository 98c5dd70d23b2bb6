"""PiToMe energy and matching against a loop implementation."""

from __future__ import annotations

import math

import pytest
import torch

from tokenreduce.core.assign import apply_assignment
from tokenreduce.encoder.methods import LayerTensors, make_method


def cos(u, v):
    return float(u @ v) / max(float(u.norm()) * float(v.norm()), 1e-12)


def elu(x, alpha):
    return x if x > 0 else alpha * (math.exp(x) - 1)


def reference_groups(keys, lengths, protected, r, margin, alpha):
    """Per row: {kept token: sorted members}."""
    rows = []
    for b in range(keys.shape[0]):
        toks = list(range(protected, int(lengths[b])))
        energy = {i: sum(elu(cos(keys[b, i], keys[b, j]) - margin, alpha) for j in toks) / len(toks) for i in toks}
        rr = min(int(r[b]), len(toks) // 2)
        order = sorted(toks, key=lambda i: (-energy[i], i))[: 2 * rr]
        a_set, b_set = order[0::2], order[1::2]
        groups = {i: [i] for i in range(int(lengths[b])) if i not in a_set}
        for i in a_set:
            best = max(b_set, key=lambda j: (cos(keys[b, i], keys[b, j]), -j))
            groups[best].append(i)
        rows.append({k: sorted(v) for k, v in groups.items()})
    return rows


@pytest.mark.parametrize("seed", range(8))
def test_pitome_plan_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n, protected = 13, 1 + seed % 2
    lengths = torch.tensor([n, n - 4, protected + 3])
    valid = torch.arange(n)[None] < lengths[:, None]
    keys = torch.randn(3, n, 6, generator=g)
    x = torch.randn(3, n, 4, generator=g, dtype=torch.float64)
    sizes = torch.where(valid, torch.randint(1, 4, (3, n), generator=g).double(), 0.0)
    r = torch.tensor([4, 3, 5])
    m = make_method("pitome", r=1, margin=0.6, alpha=0.7)
    t = LayerTensors(x=x, sizes=sizes, keys=keys, cls_attn=None, layer=1, protected=protected, num_layers=4)
    plan = m.plan(t, r)
    out, out_sizes = apply_assignment(x, sizes, plan.dst, plan.n_out)
    ref = reference_groups(keys, lengths, protected, r, 0.6 * (1 - 1 / 4), 0.7)
    for b, groups in enumerate(ref):
        got = {}
        for i in range(int(lengths[b])):
            got.setdefault(int(plan.dst[b, i]), []).append(i)
        assert sorted(map(sorted, got.values())) == sorted(groups.values())
        for members in groups.values():
            slot = int(plan.dst[b, members[0]])
            want = sum(x[b, i] * sizes[b, i] for i in members) / sum(sizes[b, i] for i in members)
            torch.testing.assert_close(out[b, slot], want)
        assert len(groups) == int(lengths[b]) - min(int(r[b]), (int(lengths[b]) - protected) // 2)
        assert plan.dst[b, :protected].tolist() == list(range(protected))
