"""Analytic MACs of diffusion token reduction (tokenreduce.diffusion.cost, owned by each method's
``tokens``) against what PyTorch executes (``FlopCounterMode``, FLOPs = 2 x MACs), per transformer block
and for the whole denoising step, on tiny U-Net (SD layout), DiT and PixArt models at several ratios."""

from __future__ import annotations

import re

import pytest
import torch

import tokenreduce
from tokenreduce.diffusion.cost import step_cost, total_macs

diffusers = pytest.importorskip("diffusers")

from test_diffusion import inputs, model_for  # noqa: E402

BLOCK = re.compile(r"transformer_blocks\.(\d+)$")
SIZES = {"unet": (16, 16), "dit": (8, 8), "pixart": (8, 8)}
CONTEXT = {"unet": 7, "dit": 0, "pixart": 5}


def counted(model, args, kwargs) -> tuple[int, dict[str, int]]:
    """(total FLOPs, FLOPs per transformer block by module name), CPU SDPA counted as on the GPU."""
    from torch.utils import flop_counter as fcm

    op = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    counter = fcm.FlopCounterMode(display=False, custom_mapping={
        op: lambda q, k, v, *a, **kw: fcm.sdpa_flop_count(q, k, v)})
    with counter, torch.no_grad():
        model(*args, **kwargs)
    blocks = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items() if BLOCK.search(name)}
    return int(counter.get_total_flops()), blocks


CASES = [
    ("unet", None, {}),
    ("unet", "tomesd", {"ratio": 0.0}),
    ("unet", "tomesd", {"ratio": 0.3}),
    ("unet", "tomesd", {"ratio": 0.5}),
    ("unet", "tomesd", {"ratio": 0.75, "merge_crossattn": True, "merge_mlp": True}),
    ("unet", "tomesd", {"ratio": 0.5, "max_downsample": 2, "merge_mlp": True}),
    ("unet", "tomesd-threshold", {"ratio": 0.5, "threshold": -1.0}),
    ("unet", "todo", {}),
    ("unet", "todo", {"stride": (2, 1), "max_downsample": 2}),
    ("dit", None, {}),
    ("dit", "tomesd", {"ratio": 0.3}),
    ("dit", "tomesd", {"ratio": 0.7, "merge_mlp": True}),
    ("dit", "todo", {}),
    ("dit", "dit-merge", {"ratio": 0.0}),
    ("dit", "dit-merge", {"ratio": 0.5}),
    ("dit", "dit-merge", {"ratio": 0.7, "start": 1}),
    ("pixart", "tomesd", {"ratio": 0.5, "merge_crossattn": True}),
    ("pixart", "todo", {}),
    ("pixart", "dit-merge", {"ratio": 0.3, "end": 0}),
]


@pytest.mark.parametrize(("family", "method", "params"), CASES)
def test_analytic_macs_equal_flop_counter(family, method, params):
    """Each block's analytic MACs x 2 = the FLOPs FlopCounterMode attributes to it (the matching
    included), and the whole step changes by exactly the analytic difference (nothing outside the blocks
    moves)."""
    model = model_for(family)
    args, kwargs = inputs(family)
    base_total, _ = counted(model, args, kwargs)
    base = step_cost(model, SIZES[family], 2, None, CONTEXT[family])
    if method is None:
        total, blocks = counted(model, args, kwargs)
        costs = base
    else:
        with tokenreduce.patched(model, method, **params):
            total, blocks = counted(model, args, kwargs)
        costs = step_cost(model, SIZES[family], 2, method, CONTEXT[family], **params)
    assert len(blocks) == len(costs) > 0
    order = [b for b in model.modules() if type(b).__name__ == "BasicTransformerBlock"]
    by_index = {order.index(model.get_submodule(name.split(".", 1)[1])): f for name, f in blocks.items()}
    assert [2 * c.total for c in costs] == [by_index[i] for i in range(len(costs))]
    assert total - base_total == 2 * (total_macs(costs) - total_macs(base))
    if method is not None and params.get("ratio", 1) > 0 and family != "pixart":
        assert total_macs(costs) < total_macs(base)


def test_cost_reaches_the_blocks_the_adapter_reaches():
    """max_downsample=1 on the SD layout reduces only the finest level's blocks; the ratio and the
    stride's cells set the merged count; ToDo keeps every query and a quarter of the keys."""
    model = model_for("unet")
    costs = step_cost(model, (16, 16), 1, "tomesd", 7, ratio=0.5)
    assert [c.grid for c in costs] == [(16, 16), (16, 16), (16, 16), (8, 8)]  # down, up x 2, mid
    assert [c.tokens.attn_q for c in costs] == [128, 128, 128, 64]
    assert all(c.reducer == (256 - 64) * 64 * 32 for c in costs if c.grid == (16, 16))
    todo = step_cost(model, (16, 16), 1, "todo", 7)
    assert [(c.tokens.attn_q, c.tokens.attn_kv) for c in todo][0] == (256, 64)
