"""Ragged KV storage: a different number of entries per (sequence, KV head) -- real memory savings.

Per-head (AdaKV) and per-layer (PyramidKV) budgets cannot live in one dense (B, Hkv, L, D) tensor
without padding or masking. :class:`RaggedLayer` stores one (n_bh, D) tensor per sequence and KV
head, and the ``"tokenreduce_ragged"`` attention function (registered with transformers'
``AttentionInterface``) attends each query group to its own head's entries; layers that are still
dense fall through to SDPA. Stored prefix entries are all real tokens, so padding needs no filler.
The 2D mask the model builds is sized after layer 0 (``get_mask_sizes``); only its last q columns
(the new tokens: causal + padding) are used here.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from .presses.base import Press
from .select import row_budgets

NAME = "tokenreduce_ragged"


class RaggedKV:
    """What a ragged layer's ``update`` hands to the attention function (instead of dense tensors)."""

    def __init__(self, layer: RaggedLayer, q_len: int):
        self.layer, self.q_len = layer, q_len


class RaggedLayer(DynamicLayer):
    """Per-(sequence, KV head) key/value tensors of different lengths."""

    def __init__(self, keys: list[list[Tensor]], values: list[list[Tensor]], appended: int = 0):
        super().__init__()
        self.k, self.v = keys, values  # [B][Hkv] -> (n_bh, D)
        # entries fed after compression (the same count for every head; padding among them is masked
        # by the 2D mask's last ``appended`` columns), after each head's all-real compressed prefix
        self.appended = appended
        self.is_initialized = True
        first = keys[0][0]
        self.device, self.keys, self.values = first.device, first.new_empty(0), first.new_empty(0)

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        for b in range(key_states.shape[0]):
            for h in range(key_states.shape[1]):
                self.k[b][h] = torch.cat([self.k[b][h], key_states[b, h]])
                self.v[b][h] = torch.cat([self.v[b][h], value_states[b, h]])
        self.appended += key_states.shape[2]
        handle = RaggedKV(self, key_states.shape[2])
        return handle, handle

    def __copy__(self) -> RaggedLayer:  # copies the lists, shares the tensors (updates make new ones)
        return RaggedLayer([list(r) for r in self.k], [list(r) for r in self.v], self.appended)

    def lengths(self) -> list[list[int]]:
        return [[t.shape[0] for t in row] for row in self.k]

    def get_seq_length(self) -> int:
        return max(max(r) for r in self.lengths())

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for rows in (self.k, self.v) for row in rows for t in row)

    def dense_kv(self):
        raise TypeError("a ragged layer has no dense keys (it was already compressed per head)")

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("beam search is not supported with ragged KV storage")


def ragged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for a mix of dense (SDPA) and ragged layers; returns (B, q, H, D) like SDPA's wrapper."""
    if not isinstance(key, RaggedKV):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    layer, q = key.layer, key.q_len
    b_size, n_heads = query.shape[:2]
    hkv = len(layer.k[0])
    g = n_heads // hkv
    scale = module.scaling if scaling is None else scaling
    tail = _tail_mask(attention_mask, layer.appended, q, b_size, query.device)  # (B, q, appended)
    out = query.new_empty(b_size, n_heads, q, query.shape[-1])
    for b in range(b_size):
        for h in range(hkv):
            k, v = layer.k[b][h], layer.v[b][h]
            prefix = torch.ones(q, k.shape[0] - layer.appended, dtype=torch.bool, device=query.device)
            mask = torch.cat([prefix, tail[b]], dim=-1)
            qs = query[b, h * g : (h + 1) * g]
            out[b, h * g : (h + 1) * g] = F.scaled_dot_product_attention(qs, k, v, attn_mask=mask, scale=scale)
    return out.transpose(1, 2).contiguous(), None


def _tail_mask(attention_mask: Tensor | None, appended: int, q: int, b_size: int, device) -> Tensor:
    """Which of the ``appended`` entries fed after compression (the q new ones last) each new query sees,
    (B, q, appended) bool: the last ``appended`` columns of the model's 4D mask, whose columns end with
    the tokens fed since compression (left padding of a later block included). Without a mask
    (no padding anywhere), every earlier entry is visible and the new ones are causal."""
    if attention_mask is None:
        seen = torch.ones(q, appended, dtype=torch.bool, device=device)
        seen[:, appended - q :] = torch.ones(q, q, dtype=torch.bool, device=device).tril()
        return seen[None].expand(b_size, q, appended)
    cols = attention_mask[:, 0, :, -appended:]
    return cols if cols.dtype == torch.bool else cols == 0


def build_ragged(keys: Tensor, values: Tensor, keep_idx: list[list[Tensor]]) -> RaggedLayer:
    """A ragged layer holding, per (b, h), the entries at ``keep_idx[b][h]`` (sorted positions)."""
    k = [[keys[b, h, i].clone() for h, i in enumerate(row)] for b, row in enumerate(keep_idx)]
    v = [[values[b, h, i].clone() for h, i in enumerate(row)] for b, row in enumerate(keep_idx)]
    return RaggedLayer(k, v)


def select_ragged(scores: Tensor, valid: Tensor, keep: float, min_share: float) -> list[list[Tensor]]:
    """Per-(b, head) kept positions: ``ceil(keep * n_b) * Hkv`` entries per row shared among heads by score,
    each head guaranteed ``floor(min_share * ceil(keep * n_b))`` (AdaKV's safeguard; 1.0 = equal split)."""
    return select_shared(scores[None], valid, keep, min_share)[0]


def select_shared(scores: Tensor, valid: Tensor, keep: float, min_share: float) -> list[list[list[Tensor]]]:
    """Kept positions ``[layer][b][head]`` when ``scores`` (S, B, Hkv, N) of S layers compete for one budget.

    Each row keeps ``ceil(keep * n_b) * Hkv * S`` entries in all, the best by score over every layer and
    head (KVzip's cross-layer ranking for S > 1, AdaKV's per-layer sharing for S = 1); each (layer, head)
    is guaranteed ``floor(min_share * ceil(keep * n_b))`` entries. Scores must be comparable across heads
    (and layers), e.g. attention probabilities."""
    n_layers, b_size, hkv, n = scores.shape
    budgets = row_budgets(valid, keep)
    out: list[list[list[Tensor]]] = [[] for _ in range(n_layers)]
    for b in range(b_size):
        per_head = int(budgets[b])
        floor = min(per_head, int(min_share * per_head))
        s = scores[:, b].float().clone()  # (S, Hkv, N)
        order = s.sort(dim=-1, descending=True, stable=True).indices
        guaranteed = torch.zeros_like(s, dtype=torch.bool).scatter_(-1, order[..., :floor], True)
        s = s.masked_fill(guaranteed, float("inf")).masked_fill(~valid[b], float("-inf"))
        flat = s.flatten().sort(descending=True, stable=True).indices[: per_head * hkv * n_layers]
        chosen = torch.zeros(s.numel(), dtype=torch.bool, device=s.device).scatter_(0, flat, True).view_as(s)
        chosen &= valid[b]
        for layer in range(n_layers):
            out[layer].append([chosen[layer, h].nonzero().flatten() for h in range(hkv)])
    return out


AttentionInterface.register(NAME, ragged_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def ragged_attention_for(model, press: Press | None) -> Iterator[None]:
    """Route the model's attention through :func:`ragged_attention` while ``press`` needs ragged storage."""
    if press is None or not press.ragged:
        yield
        return
    old = model.config._attn_implementation
    model.config._attn_implementation = NAME
    try:
        yield
    finally:
        model.config._attn_implementation = old
