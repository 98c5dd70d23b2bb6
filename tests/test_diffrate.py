"""DiffRate prune-then-merge against a loop implementation; FLOP-targeted schedules."""

from __future__ import annotations

import pytest
import torch
from models import vit

import tokenreduce as tr
from tokenreduce.bench.flops import measured_flops
from tokenreduce.core.dims import ModelDims
from tokenreduce.encoder.adapters.patching import resolve_family
from tokenreduce.encoder.cost import encoder_cost, schedule_for_flops, total_macs
from tokenreduce.encoder.methods import LayerTensors, make_method


def cos(u, v):
    return float(u @ v) / max(float(u.norm()) * float(v.norm()), 1e-12)


@pytest.mark.parametrize("seed", range(6))
def test_plan_matches_reference(seed):
    g = torch.Generator().manual_seed(seed)
    n, protected = 16, 1 + seed % 2
    lengths = torch.tensor([n, n - 6, protected + 5])
    valid = torch.arange(n)[None] < lengths[:, None]
    keys = torch.randn(3, n, 4, generator=g)
    cls = torch.rand(3, n, generator=g)
    prune, merge = (3, 2), (4, 2)
    m = make_method("diffrate", prune=list(prune), merge=list(merge))
    r = torch.tensor([7, 4, 6])  # the runner's budget (prune + merge, already capped)
    t = LayerTensors(x=keys, sizes=valid.float(), keys=keys, cls_attn=cls, layer=0, protected=protected)
    plan = m.plan(t, r)
    for b in range(3):
        ln = int(lengths[b])
        toks = sorted(range(protected, ln), key=lambda j: (float(cls[b, j]), j))
        budget = min(int(r[b]), len(toks))
        n_p = min(budget, prune[0])
        n_m = min(budget - n_p, max(len(toks) - n_p - 1, 0))
        pruned, rest = toks[:n_p], toks[n_p:]
        merged, dest = rest[:n_m], rest[n_m:]
        partner = {i: max(dest, key=lambda j: (cos(keys[b, i], keys[b, j]), -j)) for i in merged}
        kept = [j for j in range(ln) if j not in pruned and j not in merged]
        for j in range(ln):
            want = -1 if j in pruned else kept.index(partner.get(j, j))
            assert int(plan.dst[b, j]) == want


def test_schedule_for_flops_hits_the_target():
    dims = ModelDims(hidden=768, heads=12, head_dim=64, ffn=3072, layers=12)  # ViT-B/16
    base = total_macs(encoder_cost(dims, torch.tensor([197])))
    for target in (0.9, 0.75, 0.6, 0.5, 0.4):
        s = schedule_for_flops(dims, 197, target)
        assert len(s.prune) == len(s.merge) == 12
        got = total_macs(encoder_cost(dims, torch.tensor([197]), make_method("diffrate", prune=s.prune, merge=s.merge)))
        assert got / base == pytest.approx(s.flops_ratio)
        assert abs(s.flops_ratio - target) <= 0.005
    with pytest.raises(ValueError, match="reachable minimum"):
        schedule_for_flops(dims, 197, 0.1)


def test_schedule_for_flops_against_the_flop_counter():
    """The schedule's promised ratio is what PyTorch executes in the blocks of a real (tiny) model."""
    model = vit()
    fam, _ = resolve_family(model)
    px = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    s = schedule_for_flops(fam.dims(model), 65, 0.6, prune_share=0.3)
    assert abs(s.flops_ratio - 0.6) < 0.02  # 64 tokens: one token is ~1.6% of the cost
    dims = fam.dims(model)
    blocks = total_macs(encoder_cost(dims, torch.tensor([65, 65])))
    with torch.inference_mode():
        base = measured_flops(model, pixel_values=px)
        with tr.patched(model, "diffrate", prune=s.prune, merge=s.merge):
            reduced = measured_flops(model, pixel_values=px)
    # everything outside the blocks (embedding, pooler) is unchanged, so the block MACs executed are
    # blocks − (base − reduced) / 2, and their ratio to the unreduced blocks is the promised one
    assert (blocks - (base - reduced) / 2) / blocks == pytest.approx(s.flops_ratio, abs=1e-12)
