"""Per-head selections (SnapKV dense, AdaKV ragged) against an independent reference: the full cache
with each KV head's dropped keys masked out by a hand-written eager attention."""

from __future__ import annotations

import pytest
import torch
from kv_models import FAMILIES, random_ids, tiny_lm
from transformers import AttentionInterface

from tokenreduce.kv import apply_press, make_press
from tokenreduce.kv import cache as kvc
from tokenreduce.kv.ragged import RaggedLayer
from tokenreduce.kv.session import Session, prefill

N, T = 48, 6


def _kept_per_head(full_keys: torch.Tensor, layer) -> torch.Tensor:
    """(Hkv, N) bool: which of the N prefix keys a compressed layer still holds (batch 1)."""
    heads = [t[:-T] for t in layer.k[0]] if isinstance(layer, RaggedLayer) else list(layer.keys[0, :, :-T])
    out = torch.zeros(full_keys.shape[1], N, dtype=torch.bool)
    for h, small in enumerate(heads):
        d = (small[:, None] - full_keys[0, h][None]).abs().amax(-1)  # (L, N)
        assert bool((d.min(-1).values < 1e-5).all())
        out[h, d.argmin(-1)] = True
    return out


def _masked_reference(model, ids, cont, kept: dict[int, torch.Tensor]) -> torch.Tensor:
    """Logits of ``cont`` after a full prefill, each query head seeing only its KV head's kept prefix keys."""

    def attention(module, q, k, v, mask, scaling, dropout=0.0, **kwargs):
        g = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
        allowed = torch.ones(q.shape[1], T, k.shape[2], dtype=torch.bool)
        allowed[:, :, :N] = kept[module.layer_idx].repeat_interleave(g, 0)[:, None, :]
        allowed[:, :, N:] = torch.ones(T, T, dtype=torch.bool).tril()
        w = ((q @ k.transpose(2, 3)) * scaling).masked_fill(~allowed[None], float("-inf"))
        return (w.softmax(-1) @ v).transpose(1, 2).contiguous(), None

    AttentionInterface.register("test_headmask_reference", attention)
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=True)
        old = model.config._attn_implementation
        model.config._attn_implementation = "test_headmask_reference"
        try:
            return model(input_ids=cont, position_ids=torch.arange(N, N + T)[None], cache=full.cache).logits
        finally:
            model.config._attn_implementation = old


@pytest.mark.parametrize("family", list(FAMILIES))
@pytest.mark.parametrize("press", ["snapkv", "adakv"])
def test_per_head_selection_equals_per_head_masking(family, press):
    model = tiny_lm(family)
    ids, cont = random_ids(1, N, seed=4), random_ids(1, T, seed=3)
    s = Session(model, kvc.new_cache(model), ids[:, :0])
    with torch.no_grad(), apply_press(model, make_press(press, keep=0.3, window=8), auto=False) as runner:
        prefill(s, ids, torch.ones_like(ids), runner)
        got = s.feed(cont)
    with torch.no_grad():
        full_cache = model(input_ids=ids, use_cache=True).cache
    kept = {i: _kept_per_head(full_cache.layers[i].keys, layer) for i, layer in enumerate(s.cache.layers)}
    assert any(not torch.equal(k[0], k[1]) for k in kept.values())  # heads really kept different tokens
    torch.testing.assert_close(got, _masked_reference(model, ids, cont, kept), rtol=1e-4, atol=1e-4)
