"""Grid pooling against avg_pool2d and a loop over partial windows."""

from __future__ import annotations

import pytest
import torch

from tokenreduce.core.assign import apply_assignment
from tokenreduce.encoder.methods import LayerTensors, make_method
from tokenreduce.encoder.methods.pooling import window_for_keep


def pooled(method, x, protected):
    sizes = torch.ones(x.shape[:2], dtype=x.dtype)
    t = LayerTensors(x=x, sizes=sizes, keys=None, cls_attn=None, layer=0, protected=protected)
    plan = method.plan(t, torch.zeros(x.shape[0], dtype=torch.long))
    return apply_assignment(x, sizes, plan.dst, plan.n_out)


def test_divisible_grid_equals_avg_pool2d():
    x = torch.randn(2, 1 + 36, 5, dtype=torch.float64)
    out, sizes = pooled(make_method("pool", window=2), x, 1)
    grid = x[:, 1:].reshape(2, 6, 6, 5).permute(0, 3, 1, 2)
    ref = torch.nn.functional.avg_pool2d(grid, 2).permute(0, 2, 3, 1).reshape(2, 9, 5)
    assert torch.equal(out[:, 0], x[:, 0])
    torch.testing.assert_close(out[:, 1:], ref)
    assert (sizes[:, 1:] == 4).all() and (sizes[:, 0] == 1).all()


@pytest.mark.parametrize("grid,window", [((5, 5), (2, 2)), ((4, 7), (3, 2)), ((6, 4), (1, 3))])
def test_partial_windows_match_loop(grid, window):
    h, w = grid
    x = torch.randn(1, 2 + h * w, 3, dtype=torch.float64)
    out, sizes = pooled(make_method("pool", window=list(window), grid=list(grid)), x, 2)
    kh, kw = window
    slot = 2
    for i0 in range(0, h, kh):
        for j0 in range(0, w, kw):
            members = [2 + i * w + j for i in range(i0, min(i0 + kh, h)) for j in range(j0, min(j0 + kw, w))]
            torch.testing.assert_close(out[0, slot], x[0, members].mean(0))
            assert int(sizes[0, slot]) == len(members)
            slot += 1
    assert out.shape[1] == slot


def test_keep_to_window_and_grid_order_check():
    assert [window_for_keep(k) for k in (1.0, 0.5, 0.25, 1 / 3, 1 / 6, 1 / 9)] == [
        (1, 1),
        (1, 2),
        (2, 2),
        (1, 3),
        (2, 3),
        (3, 3),
    ]
    m = make_method("pool", window=2)
    sizes = torch.ones(1, 17)
    sizes[0, 5] = 2  # an earlier merge: no longer a grid in order
    t = LayerTensors(x=torch.zeros(1, 17, 2), sizes=sizes, keys=None, cls_attn=None, layer=0, protected=1)
    with pytest.raises(RuntimeError, match="grid"):
        m.plan(t, torch.zeros(1, dtype=torch.long))


def test_a_keep_that_rounds_to_a_1x1_window_is_refused_not_a_silent_no_op():
    import pytest

    import tokenreduce as tr

    with pytest.raises(ValueError, match="1x1 window, which pools nothing"):
        tr.make_method("pool", keep=0.7)
    assert tr.make_method("pool", keep=0.6)._window() == (1, 2)
    tr.make_method("pool", keep=1.0)  # no reduction, exact
