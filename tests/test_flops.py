"""The analytic FLOP counter agrees with what PyTorch executes, on every matmul."""

from __future__ import annotations

import pytest
import torch
from models import bert, clip_vision, deit, pixels, text_batch, vit

import tokenreduce as tr
from tokenreduce.bench.flops import measured_flops
from tokenreduce.encoder.adapters.patching import resolve_family
from tokenreduce.encoder.cost import encoder_cost, total_macs

METHODS = [
    (None, {}),
    ("tome", {"r": 3}),
    ("tome", {"keep": 0.3, "schedule": "decreasing"}),
    ("evit", {"keep": 0.4}),
    ("evit", {"keep": 0.4, "fuse": False}),
    ("random", {"keep": 0.5}),
    ("topk-norm", {"keep": 0.5, "fuse": True}),
    ("tome", {"keep": 0.4, "schedule": "decreasing", "metric": "hidden", "min_tokens": 5}),
]


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("method,params", METHODS)
def test_text_encoder_flops_match_flop_counter(impl, method, params):
    model = bert(impl, pooling=False)
    x = text_batch()
    fam, _ = resolve_family(model)
    m = tr.make_method(method, **params) if method else None
    if m:
        tr.patch(model, m)
    with torch.inference_mode():
        measured = measured_flops(model, **x)
    analytic = total_macs(encoder_cost(fam.dims(model), x["attention_mask"].sum(1), m, 1))
    assert measured == 2 * analytic


@pytest.mark.parametrize("make", [vit, deit, clip_vision])
@pytest.mark.parametrize("method,params", METHODS)
def test_vision_encoder_flops_match_flop_counter(make, method, params):
    """Blocks only: the patch-embedding convolution is the same with and without reduction."""
    model = make()
    px = pixels()
    fam, _ = resolve_family(model)
    prot = fam.default_protected(model)
    lengths = torch.full((3,), 64 + prot)
    with torch.inference_mode():
        base = measured_flops(model, pixel_values=px)
    m = tr.make_method(method, **params) if method else None
    if m:
        tr.patch(model, m)
    with torch.inference_mode():
        measured = measured_flops(model, pixel_values=px)
    dims = fam.dims(model)
    delta = total_macs(encoder_cost(dims, lengths, m, prot)) - total_macs(encoder_cost(dims, lengths))
    assert measured - base == 2 * delta


def test_reducer_cost_is_counted():
    lengths = torch.tensor([50])
    dims = tr.families()[0].dims(bert())
    costs = encoder_cost(dims, lengths, tr.make_method("tome", r=2), 1)
    assert costs[0].reducer == 25 * 24 * dims.head_dim
    assert [c.n_in for c in costs] == [50, 48, 46, 44]
    assert [c.n_out for c in costs] == [48, 46, 44, 42]
