"""Budgets per layer and row: exact totals, caps, per-row independence, validation."""

from __future__ import annotations

import pytest
import torch

from tokenreduce.core.schedule import Schedule


def test_keep_rate_reaches_exact_total_per_row():
    n0 = torch.tensor([10, 57, 128, 4])
    for keep in (0.9, 0.7, 0.5, 0.3, 0.25):
        for shape in ("constant", "decreasing"):
            r = Schedule(keep=keep, shape=shape).removals(n0, 12, cap=0.5)
            assert torch.equal(r.sum(0), n0 - torch.round(n0.double() * keep).long())


def test_decreasing_front_loads_and_constant_spreads():
    n0 = torch.tensor([120])
    dec = Schedule(keep=0.4, shape="decreasing").removals(n0, 6)[:, 0].tolist()
    const = Schedule(keep=0.4).removals(n0, 6)[:, 0].tolist()
    assert dec == sorted(dec, reverse=True) and dec[0] > dec[-1]
    assert max(const) - min(const) <= 1


def test_cap_is_respected_and_deficit_carried():
    n0 = torch.tensor([8])
    r = Schedule(keep=0.1).removals(n0, 2, cap=0.5)[:, 0].tolist()
    assert r == [4, 2]  # wanted 4+3, second layer capped at half of 4
    assert Schedule(r=100).removals(torch.tensor([16]), 3)[:, 0].tolist() == [8, 4, 2]


def test_rows_are_independent_of_each_other():
    a = Schedule(keep=0.37, shape="decreasing").removals(torch.tensor([77, 12, 200]), 6)
    b = Schedule(keep=0.37, shape="decreasing").removals(torch.tensor([12]), 6)
    assert torch.equal(a[:, 1], b[:, 0])


def test_layers_and_lists():
    r = Schedule(r=5, layers=(1, 3)).removals(torch.tensor([40]), 4)[:, 0].tolist()
    assert r == [0, 5, 0, 5]
    assert Schedule(r=(1, 0, 2, 0)).removals(torch.tensor([40]), 4)[:, 0].tolist() == [1, 0, 2, 0]
    assert Schedule(r=0).is_identity() and Schedule(keep=1.0).is_identity() and not Schedule(r=(0, 1)).is_identity()


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"r": 1, "keep": 0.5},
        {"keep": 0},
        {"keep": 1.01},
        {"r": -2},
        {"r": 1.5},
        {"r": 1, "shape": "cosine"},
        {"r": 1, "layers": (-1,)},
    ],
)
def test_invalid(kw):
    with pytest.raises(ValueError):
        Schedule(**kw)


def test_min_tokens_floor():
    n0 = torch.tensor([10, 100, 4])
    r = Schedule(keep=0.1, min_tokens=16).removals(n0, 6, cap=0.9)
    assert r.sum(0).tolist() == [0, 84, 0]
    r = Schedule(r=50, min_tokens=8).removals(torch.tensor([40]), 3, cap=0.9)
    assert r[:, 0].tolist() == [32, 0, 0]
    with pytest.raises(ValueError, match="min_tokens"):
        Schedule(r=1, min_tokens=-1)
