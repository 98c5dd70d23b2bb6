"""SnapKV's own scoring cost (``SnapKV.scoring_macs``, used by scripts/bench_vlm_kv.py) equals what runs."""

from __future__ import annotations

import pytest
import torch
from kv_models import tiny_lm

from tokenreduce.bench.flops import measured_flops
from tokenreduce.kv import SnapKV
from tokenreduce.kv.hooks import attention_modules
from tokenreduce.kv.presses.base import LayerView
from tokenreduce.vlm.flops import DecoderShape


@torch.no_grad()
@pytest.mark.parametrize("n,window", [(40, 8), (12, 32)])
def test_snapkv_scoring_macs_equal_flop_counter(n, window):
    model = tiny_lm("llama")
    seen = {}

    def grab(module, args, kwargs, output):
        seen["hidden"], (seen["cos"], seen["sin"]) = kwargs["hidden_states"], kwargs["position_embeddings"]

    attn = attention_modules(model)[0]
    h = attn.register_forward_hook(grab, with_kwargs=True)
    out = model(input_ids=torch.randint(1, 90, (1, n)), use_cache=True)
    h.remove()
    keys, values = out.cache.layers[0].keys, out.cache.layers[0].values
    view = LayerView(attn, 0, 3, seen["hidden"], seen["cos"], seen["sin"], keys, values,
                     torch.ones(1, n, dtype=torch.bool))
    press = SnapKV(keep=0.5, window=window)
    assert measured_flops(press.score, view) == 2 * press.scoring_macs(DecoderShape.of(model.config), n)
