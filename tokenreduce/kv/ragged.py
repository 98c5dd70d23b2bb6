"""Ragged KV storage: a different number of entries per (sequence, KV head) -- real memory savings.

Per-head (AdaKV) and per-layer (PyramidKV) budgets do not fit one dense (B, Hkv, L, D) tensor of
real entries. :class:`RaggedLayer` pads each (sequence, KV head) to the layer's longest one: its
kept entries are stored right-aligned in one (B, Hkv, P, D) tensor (``P`` = the longest head's count,
zero filler first), with the head's entry count kept in ``counts`` (B, Hkv); tokens fed after
compression are appended densely behind. The ``"tokenreduce_ragged"`` attention function (registered
with transformers' ``AttentionInterface``) attends every layer with one SDPA call: each KV head's query
group is folded into the query axis and a (B, Hkv, g*q, P + appended) mask hides the filler. Layers
that are still dense fall through to SDPA. Bytes held = the budget + the declared padding
(:meth:`RaggedLayer.padding_bytes`: ``sum over (b, h) of (P - count_bh) x D x 2`` elements).
The 2D mask the model builds is sized after layer 0 (``get_mask_sizes``); only its last columns
(the entries fed after compression: causal + padding) are used here.
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
    """Per-(sequence, KV head) entries padded to the longest head: ``keys``/``values`` (B, Hkv, P + A, D),
    the first P columns each head's kept entries right-aligned (zero filler first), then the A entries
    fed after compression (the same for every head; their padding is masked by the 2D mask)."""

    def __init__(self, keys: Tensor, values: Tensor, counts: Tensor, appended: int = 0):
        super().__init__()
        self.keys, self.values = keys, values
        self.counts = counts  # (B, Hkv) real prefix entries per head
        self.appended = appended
        self.is_initialized = True
        self.device, self.dtype = keys.device, keys.dtype

    @classmethod
    def from_chosen(cls, keys: Tensor, values: Tensor, chosen: Tensor) -> RaggedLayer:
        """The entries of ``keys``/``values`` (B, Hkv, N, D) marked by ``chosen`` (B, Hkv, N) bool, per head."""
        n = keys.shape[2]
        counts = chosen.sum(-1)
        width = int(counts.max()) if counts.numel() else 0
        pos = torch.arange(n, device=keys.device).expand_as(chosen)
        # chosen positions last, in order; -1 (filler) first
        idx = torch.where(chosen, pos, -1).sort(dim=-1).values[..., n - width :]
        filler = idx < 0
        idx = idx.clamp(min=0)[..., None].expand(*idx.shape, keys.shape[-1])
        k = keys.gather(2, idx).masked_fill(filler[..., None], 0)
        v = values.gather(2, idx).masked_fill(filler[..., None], 0)
        return cls(k, v, counts)

    @property
    def prefix_len(self) -> int:
        """P: the padded prefix length (the longest head's kept entries)."""
        return self.keys.shape[2] - self.appended

    def head_valid(self) -> Tensor:
        """(B, Hkv, P + A) bool: real prefix entries of each head, then every appended entry."""
        p = self.prefix_len
        col = torch.arange(self.keys.shape[2], device=self.keys.device)
        return col >= (p - self.counts)[..., None]  # appended columns are >= p

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        self.appended += key_states.shape[2]
        handle = RaggedKV(self, key_states.shape[2])
        return handle, handle

    def __copy__(self) -> RaggedLayer:  # shares the tensors (updates and presses make new ones)
        return RaggedLayer(self.keys, self.values, self.counts, self.appended)

    @property
    def k(self) -> list[list[Tensor]]:
        """Each (b, head)'s real entries (n_bh, D), prefix then appended (views)."""
        return self._heads(self.keys)

    @property
    def v(self) -> list[list[Tensor]]:
        return self._heads(self.values)

    def _heads(self, x: Tensor) -> list[list[Tensor]]:
        p = self.prefix_len
        return [[x[b, h, p - int(c):] for h, c in enumerate(row)] for b, row in enumerate(self.counts.tolist())]

    def lengths(self) -> list[list[int]]:
        return (self.counts + self.appended).tolist()

    def get_seq_length(self) -> int:
        return self.keys.shape[2]

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.get_seq_length() + query_length, 0

    def nbytes(self) -> int:
        """Bytes of the key/value tensors held, filler included (see :meth:`padding_bytes`)."""
        return sum(t.numel() * t.element_size() for t in (self.keys, self.values))

    def padding_bytes(self) -> int:
        """Bytes of zero filler among :meth:`nbytes` (each head padded to the longest head of the layer)."""
        filler = int((self.prefix_len - self.counts).sum())
        return filler * self.keys.shape[-1] * 2 * self.keys.element_size()

    def dense_kv(self) -> tuple[Tensor, Tensor]:
        """The padded keys/values (B, Hkv, P + A, D); :meth:`head_valid` marks the real ones."""
        return self.keys, self.values

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("beam search is not supported with ragged KV storage")


def ragged_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """Attention for a mix of dense (SDPA) and ragged layers; returns (B, q, H, D) like SDPA's wrapper.

    A ragged layer is attended in one SDPA call: the g query heads of each KV head are folded into the
    query axis, (B, Hkv, g*q, D), against the padded keys (B, Hkv, P + A, D) under a mask that hides each
    head's filler and applies the model's mask (causal + padding) to the appended entries."""
    if not isinstance(key, RaggedKV):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    layer, q = key.layer, key.q_len
    b, n_heads, _, d = query.shape
    hkv = layer.keys.shape[1]
    g = n_heads // hkv
    scale = module.scaling if scaling is None else scaling
    p, a = layer.prefix_len, layer.appended
    tail = _tail_mask(attention_mask, a, q, b, query.device)  # (B, q, A)
    prefix = layer.head_valid()[..., :p]  # (B, Hkv, P)
    mask = torch.cat([prefix[:, :, None, :].expand(b, hkv, g * q, p),
                      tail[:, None, None].expand(b, 1, g, q, a).reshape(b, 1, g * q, a).expand(b, hkv, g * q, a)],
                     dim=-1)
    folded = query.reshape(b, hkv, g * q, d)
    out = F.scaled_dot_product_attention(folded, layer.keys, layer.values, attn_mask=mask, scale=scale)
    return out.view(b, n_heads, q, d).transpose(1, 2).contiguous(), None


def _tail_mask(attention_mask: Tensor | None, appended: int, q: int, b_size: int, device) -> Tensor:
    """Which of the ``appended`` entries fed after compression (the q new ones last) each new query sees,
    (B, q, appended) bool: the last ``appended`` columns of the model's 4D mask, whose columns end with
    the tokens fed since compression (left padding of a later block included). Without a mask
    (no padding anywhere), every earlier entry is visible and the new ones are causal."""
    if attention_mask is None:
        seen = torch.ones(q, appended, dtype=torch.bool, device=device)
        seen[:, appended - q :] = torch.ones(q, q, dtype=torch.bool, device=device).tril()
        return seen[None].expand(b_size, q, appended)
    cols = attention_mask[:, 0, :, attention_mask.shape[-1] - appended :]
    return cols if cols.dtype == torch.bool else cols == 0


def select_ragged(scores: Tensor, valid: Tensor, keep: float | Tensor, min_share: float) -> Tensor:
    """Kept entries (B, Hkv, N) bool: ``ceil(keep * n_b) * Hkv`` entries per row shared among heads by score,
    each head guaranteed ``floor(min_share * ceil(keep * n_b))`` (AdaKV's safeguard; 1.0 = equal split).
    ``keep`` may be per-row entry counts per head (B,) (chunked prefill: the final budget)."""
    return select_shared(scores[None], valid, keep, min_share)[0]


def select_shared(scores: Tensor, valid: Tensor, keep: float | Tensor, min_share: float) -> Tensor:
    """Kept entries (S, B, Hkv, N) bool when ``scores`` (S, B, Hkv, N) of S layers compete for one budget.

    Each row keeps ``ceil(keep * n_b) * Hkv * S`` entries in all, the best by score over every layer and
    head (KVzip's cross-layer ranking for S > 1, AdaKV's per-layer sharing for S = 1); each (layer, head)
    is guaranteed ``floor(min_share * ceil(keep * n_b))`` entries. Scores must be comparable across heads
    (and layers), e.g. attention probabilities. ``valid``: (B, N) real entries, or (B, Hkv, N) per head
    (a ragged layer compressed again); ``keep`` a fraction of the row's real entries or (B,) counts per
    head. Batched over rows (no Python loop); ties break by position, as a stable sort gives them."""
    n_layers, b_size, hkv, n = scores.shape
    row_valid = valid if valid.ndim == 2 else valid.any(1)
    per_head = row_budgets(row_valid, keep)  # (B,)
    floor = torch.minimum(per_head, (min_share * per_head.double()).floor().long())
    vb = (valid[:, None, None, :] if valid.ndim == 2 else valid[:, None]).expand(b_size, n_layers, hkv, n)
    s = scores.float().transpose(0, 1)  # (B, S, Hkv, N)
    order = s.sort(dim=-1, descending=True, stable=True).indices
    rank = _rank(order)
    guaranteed = rank < floor[:, None, None, None]
    s = s.masked_fill(guaranteed, float("inf")).masked_fill(~vb, float("-inf"))
    flat = _rank(s.reshape(b_size, -1).sort(dim=-1, descending=True, stable=True).indices)
    chosen = (flat < (per_head * hkv * n_layers)[:, None]).view_as(s) & vb
    return chosen.transpose(0, 1)


def _rank(order: Tensor) -> Tensor:
    """Inverse permutation along the last axis: the rank of each entry given ``order`` (best first)."""
    pos = torch.arange(order.shape[-1], device=order.device).expand_as(order)
    return torch.empty_like(order).scatter_(-1, order, pos)


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
