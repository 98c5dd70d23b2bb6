"""Attention rows rebuilt from queries/keys (SDPA path) against eager attention weights."""

from __future__ import annotations

import pytest
import torch
from kv_models import FAMILIES, random_ids, tiny_lm

from tokenreduce.kv import scoring
from tokenreduce.kv.hooks import attention_modules


def _captured(model, ids, mask=None):
    """Per layer: hidden inputs, (cos, sin) and the cached keys, captured by hooks."""
    got = {}

    def hook(mod, args, kwargs, out):
        got[mod.layer_idx] = (kwargs["hidden_states"], kwargs["position_embeddings"])

    hs = [m.register_forward_hook(hook, with_kwargs=True) for m in attention_modules(model)]
    try:
        with torch.no_grad():
            out = model(input_ids=ids, attention_mask=mask, use_cache=True, output_attentions=True)
    finally:
        for h in hs:
            h.remove()
    return got, out


@pytest.mark.parametrize("family", list(FAMILIES))
def test_window_attention_matches_eager(family):
    model = tiny_lm(family, impl="eager")
    ids = random_ids(2, 30)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    got, out = _captured(model, ids, mask)
    valid = mask.bool()
    for layer, attn in enumerate(attention_modules(model)):
        hidden, (cos, sin) = got[layer]
        keys = out.cache.layers[layer].keys
        w = 7
        q = scoring.window_queries(attn, hidden[:, -w:], cos[:, -w:], sin[:, -w:])
        rows = scoring.window_attention(q, keys, attn.scaling, valid)
        ref = out.attentions[layer][:, :, -w:, :]
        torch.testing.assert_close(rows, ref, rtol=1e-5, atol=1e-6)
        mass = scoring.column_mass(attn, hidden, cos, sin, keys, valid, chunk=8)
        ref_mass = (out.attentions[layer] * mask[:, None, :, None]).sum(2)
        torch.testing.assert_close(mass, ref_mass, rtol=1e-4, atol=1e-5)


def test_group_mean_and_pool():
    s = torch.arange(12.0).view(1, 4, 3)
    assert torch.equal(scoring.group_mean(s, 2), torch.tensor([[[1.5, 2.5, 3.5], [7.5, 8.5, 9.5]]]))
    x = torch.tensor([[0.0, 5.0, 0.0, 0.0, 1.0]])
    assert torch.equal(scoring.pool1d(x, 3), torch.tensor([[5.0, 5.0, 5.0, 1.0, 1.0]]))
