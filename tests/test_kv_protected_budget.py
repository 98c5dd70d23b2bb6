"""When the budget is smaller than what a press protects (sinks + recent, or its own window), the rule is:
the newest protected entries first, then the sinks (oldest first), then the best by score.

Before, ties among protected entries broke by position, so the *oldest* protected entries were kept
and the newest dropped (SnapKV keep=0.1 on 370 tokens kept positions 306-342 and none of the last 16).
"""

from __future__ import annotations

import pytest
import torch
from kv_models import random_ids, tiny_lm

from tokenreduce.kv import cache as kvc
from tokenreduce.kv import make_press, presses
from tokenreduce.kv.bench import capture_prefill, press_cache
from tokenreduce.kv.ragged import RaggedLayer
from tokenreduce.kv.select import protect, select

N = 40
EXTRA = {"zipcache": {"salient": 1.0, "group": 8}, "decoding": {"target": 8}, "rkv": {"target": 8},
         "think": {"channel_keep": 1.0}}  # think: all channels, so kept keys compare equal


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


@pytest.fixture(scope="module")
def prefill(model):
    return capture_prefill(model, random_ids(1, N, seed=7))


def _kept(full: torch.Tensor, layer) -> list[set[int]]:
    """Positions (per KV head of row 0) whose full-cache keys the compressed layer holds."""
    if isinstance(layer, RaggedLayer):
        heads = layer.k[0]
    else:
        keys, _ = layer.dense_kv() if hasattr(layer, "dense_kv") else (layer.keys, None)
        heads = list(keys[0])
    out = []
    for h, small in enumerate(heads):
        eq = (small[:, None, :] == full[0, h][None, :, :]).all(-1)  # (kept, N)
        out.append({int(i) for i in eq.nonzero()[:, 1]})
    return out


@pytest.mark.parametrize("name", presses())
def test_budget_below_recent_keeps_the_newest(model, prefill, name):
    """keep=0.1 of 40 tokens = 4 entries with recent=30 (and every window larger than 4): the last 4."""
    press = make_press(name, keep=0.1, sinks=3, recent=30, **EXTRA.get(name, {}))
    cache = press_cache(model, prefill, press)
    full = press_cache(model, prefill, None)
    for layer in range(kvc.n_layers(cache)):
        want = max(1, round(press.layer_keep(layer, kvc.n_layers(cache)) * N + 0.5 - 1e-9))
        kept = _kept(full.layers[layer].keys, cache.layers[layer])
        if name == "kvzip":  # one budget across layers and heads: each keeps a newest run of its own length
            want = min(len(k) for k in kept)
        for h, positions in enumerate(kept):
            newest = set(range(N - len(positions), N))
            assert positions == newest, (name, layer, h)
            assert len(positions) >= want


@pytest.mark.parametrize("name", ["streaming_llm", "snapkv", "key_norm"])
def test_budget_between_recent_and_sinks_keeps_recent_then_oldest_sinks(model, prefill, name):
    """Budget 6 with recent=4 and sinks=3: the last 4, then the first 2 sinks, no scored entry."""
    press = make_press(name, keep=6 / N, sinks=3, recent=4, **({"window": 4} if name == "snapkv" else {}))
    cache = press_cache(model, prefill, press)
    full = press_cache(model, prefill, None)
    for layer in range(kvc.n_layers(cache)):
        for positions in _kept(full.layers[layer].keys, cache.layers[layer]):
            assert positions == {0, 1, N - 4, N - 3, N - 2, N - 1}


def test_protect_orders_tiers():
    valid = torch.tensor([[False, True, True, True, True, True, True]])
    scores = torch.tensor([[[9.0, 5.0, 4.0, 100.0, 3.0, float("inf"), 1.0]]])
    s = protect(scores, valid, sinks=2, recent=1)
    # the press's +inf (a window) and the recent token outrank sinks, which outrank any score
    order = s[0, 0].argsort(descending=True, stable=True).tolist()
    assert order[:5] == [6, 5, 1, 2, 3]
    assert s[0, 0, 0] == float("-inf")
    idx, prefix = select(s, valid, keep=3 / 6)
    assert idx[0, 0].tolist() == [1, 5, 6] and prefix.all()
