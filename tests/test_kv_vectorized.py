"""Vectorized per-head (ragged) storage against the loop implementation it replaced (random inputs)."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from tokenreduce.kv.ragged import RaggedLayer, _tail_mask, ragged_attention, select_shared
from tokenreduce.kv.select import row_budgets


def _loop_select_shared(scores, valid, keep, min_share):
    """The former per-row loop (kept positions [layer][b][head])."""
    n_layers, b_size, hkv, n = scores.shape
    budgets = row_budgets(valid, keep)
    out = [[] for _ in range(n_layers)]
    for b in range(b_size):
        per_head = int(budgets[b])
        floor = min(per_head, int(min_share * per_head))
        s = scores[:, b].float().clone()
        order = s.sort(dim=-1, descending=True, stable=True).indices
        guaranteed = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, order[..., :floor], True)
        s = s.masked_fill(guaranteed, float("inf")).masked_fill(~valid[b], float("-inf"))
        flat = s.flatten().sort(descending=True, stable=True).indices[: per_head * hkv * n_layers]
        chosen = torch.zeros(s.numel(), dtype=torch.bool).scatter_(0, flat, True).view_as(s)
        chosen &= valid[b]
        for layer in range(n_layers):
            out[layer].append([chosen[layer, h].nonzero().flatten() for h in range(hkv)])
    return out


def _loop_attention(query, k_heads, v_heads, appended, attention_mask, scale):
    """The former per-(row, KV head) SDPA loop; ``k_heads[b][h]`` (n_bh, D) = prefix + appended entries."""
    b_size, n_heads, q = query.shape[:3]
    hkv = len(k_heads[0])
    g = n_heads // hkv
    tail = _tail_mask(attention_mask, appended, q, b_size, query.device)
    out = query.new_empty(b_size, n_heads, q, query.shape[-1])
    for b in range(b_size):
        for h in range(hkv):
            k, v = k_heads[b][h], v_heads[b][h]
            mask = torch.cat([torch.ones(q, k.shape[0] - appended, dtype=torch.bool), tail[b]], dim=-1)
            out[b, h * g:(h + 1) * g] = F.scaled_dot_product_attention(query[b, h * g:(h + 1) * g], k, v,
                                                                        attn_mask=mask, scale=scale)
    return out.transpose(1, 2)


def _random_scores(seed, layers=3, b=3, hkv=4, n=37):
    g = torch.Generator().manual_seed(seed)
    scores = torch.rand(layers, b, hkv, n, generator=g)
    scores[..., 5] = scores[..., 6]  # ties break by position
    valid = torch.ones(b, n, dtype=torch.bool)
    valid[1, :7] = False  # left padding
    valid[2, :20] = False
    return scores.masked_fill(~valid[None, :, None], float("-inf")), valid


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("min_share", [0.0, 0.2, 1.0])
@pytest.mark.parametrize("keep", [0.1, 0.3, 1.0])
def test_select_shared_equals_the_loop(seed, min_share, keep):
    scores, valid = _random_scores(seed)
    new = select_shared(scores, valid, keep, min_share)
    old = _loop_select_shared(scores, valid, keep, min_share)
    for layer in range(scores.shape[0]):
        for b in range(scores.shape[1]):
            for h in range(scores.shape[2]):
                assert torch.equal(new[layer, b, h].nonzero().flatten(), old[layer][b][h])


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("q,masked", [(1, False), (4, False), (3, True)])
def test_one_sdpa_call_equals_the_loop(seed, q, masked):
    """Padded per-head storage attended in one call = the per-(row, head) loop, within 1e-5, with entries
    appended after compression (a decode step, a block, a left-padded block under the model's mask)."""
    g = torch.Generator().manual_seed(seed)
    b, hkv, grp, n, d = 3, 2, 3, 29, 8
    keys, values = torch.randn(b, hkv, n, d, generator=g), torch.randn(b, hkv, n, d, generator=g)
    scores, valid = _random_scores(seed, layers=1, b=b, hkv=hkv, n=n)
    chosen = select_shared(scores, valid, 0.3, 0.0)[0]
    layer = RaggedLayer.from_chosen(keys, values, chosen)
    counts = chosen.sum(-1)
    assert layer.padding_bytes() == int((counts.max() - counts).sum()) * d * 2 * 4
    assert layer.nbytes() == int(counts.sum()) * d * 2 * 4 + layer.padding_bytes()
    heads_k = [[keys[i, h, chosen[i, h]] for h in range(hkv)] for i in range(b)]
    heads_v = [[values[i, h, chosen[i, h]] for h in range(hkv)] for i in range(b)]
    for _ in range(2):  # two updates: the appended entries grow
        new_k, new_v = torch.randn(b, hkv, q, d, generator=g), torch.randn(b, hkv, q, d, generator=g)
        handle, _ = layer.update(new_k, new_v)
        heads_k = [[torch.cat([heads_k[i][h], new_k[i, h]]) for h in range(hkv)] for i in range(b)]
        heads_v = [[torch.cat([heads_v[i][h], new_v[i, h]]) for h in range(hkv)] for i in range(b)]
        query = torch.randn(b, hkv * grp, q, d, generator=g)
        mask = None
        if masked:  # the model's 4D bool mask: causal tail, row 1's first new token is padding
            total = layer.get_seq_length()
            mask = torch.ones(b, 1, q, total, dtype=torch.bool)
            mask[..., total - q:] = torch.ones(q, q, dtype=torch.bool).tril()
            mask[1, :, :, total - q] = False
            mask[1, :, 0, total - q] = True  # the padding query sees itself (no empty row)
        module = SimpleNamespace(scaling=1 / math.sqrt(d))
        got, _ = ragged_attention(module, query, handle, handle, mask)
        want = _loop_attention(query, heads_k, heads_v, layer.appended, mask, module.scaling)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert [[t.shape[0] for t in row] for row in heads_k] == layer.lengths()
    for i in range(b):
        for h in range(hkv):
            assert torch.equal(layer.k[i][h], heads_k[i][h]) and torch.equal(layer.v[i][h], heads_v[i][h])

