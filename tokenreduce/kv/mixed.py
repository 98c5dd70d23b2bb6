"""Mixed-precision KV storage: salient prefix entries in full precision, the rest as 8/4-bit codes.

:class:`MixedLayer` holds a compressed prefix of L entries per (sequence, KV head): S salient ones
(positions ``idx``) in the cache dtype and L - S quantized ones (:mod:`tokenreduce.kv.quant`), plus
the tokens fed after compression in full precision (like ZipCache's and KIVI's full-precision recent
tokens). Attention gets dense tensors: on every ``update`` the prefix is dequantized in place into one new
tensor in its original order (codes moved first, a byte or half a byte per channel; see ``_dense``) and
dropped after the forward, so only the compact form is held between steps. Any attention implementation
(SDPA, flash, eager) keeps working.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import DynamicLayer

from .quant import QTensor, channel_scale, dequantize_into, quantize
from .select import row_budgets


def salient_positions(scores: Tensor, valid: Tensor, share: float) -> Tensor:
    """Sorted positions (B, Hkv, S) of the salient entries: each row's best ``ceil(share * n_b)`` real
    entries per head, filled up to the batch's common S with the row's padding entries (masked anyway),
    so a row's real entries get the same precision as when the row is alone."""
    k = row_budgets(valid, share) if share > 0 else torch.zeros(valid.shape[0], dtype=torch.long, device=valid.device)
    s = int(k.max()) if k.numel() else 0
    masked = scores.float().masked_fill(~valid[:, None, :], float("-inf"))
    order = masked.sort(dim=-1, descending=True, stable=True).indices
    pos = torch.arange(scores.shape[-1], device=scores.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(-1, order, pos)  # rank of each entry by score
    top = valid[:, None, :] & (rank < k[:, None, None])
    priority = torch.where(top, 2.0, torch.where(valid[:, None, :], 0.0, 1.0))  # best real, padding, other real
    idx = priority.sort(dim=-1, descending=True, stable=True).indices[..., :s]
    return idx.sort(-1).values


class MixedLayer(DynamicLayer):
    """A compressed prefix (full-precision salient entries + quantized rest) and a full-precision tail."""

    def __init__(self, keys: Tensor, values: Tensor, idx: Tensor, bits: int, group: int,
                 valid: Tensor | None = None, key_channels: bool = False):
        """``valid`` (B, L): real entries; ``key_channels``: divide key channels by :func:`channel_scale` of
        the row's real quantized keys before quantizing (ZipCache's channel-separable keys)."""
        super().__init__()
        b, h, n, d = keys.shape
        salient = torch.zeros(b, h, n, dtype=torch.bool, device=keys.device).scatter_(-1, idx, True)
        self.n, self.dtype, self.idx = n, keys.dtype, idx.to(torch.int32)
        self.kf, self.vf = (x.gather(2, idx[..., None].expand(b, h, idx.shape[-1], d)) for x in (keys, values))
        rest, shape = ~salient, (b, h, n - idx.shape[-1])
        k_rest = keys[rest].view(*shape, d)
        self.kc: Tensor | None = None  # (B, Hkv, 1, D) channel divisors of the quantized keys
        if key_channels:
            real = None if valid is None else valid[:, None, :].expand(b, h, n)[rest].view(shape)
            self.kc = channel_scale(k_rest, real)
            k_rest = k_rest.float() / self.kc.float()
        self.kq: QTensor = quantize(k_rest, bits, group)
        self.vq: QTensor = quantize(values[rest].view(*shape, d), bits, group)
        self.keys, self.values = keys[..., :0, :], values[..., :0, :]  # tokens fed after compression
        self.device, self.is_initialized = keys.device, True

    def prefix(self) -> tuple[Tensor, Tensor]:
        """The prefix's keys and values (B, Hkv, L, D), dequantized into their original order."""
        return self._dense(self.keys[..., :0, :], self.values[..., :0, :])

    def _dense(self, tail_k: Tensor, tail_v: Tensor) -> tuple[Tensor, Tensor]:
        """``[prefix in its original order, tail]`` (B, Hkv, L + T, D) for keys and values, each written into one
        new tensor: the quantized codes (a byte or half a byte per channel) are first moved to their entries'
        places, dequantized there in place, then the salient entries and the tail are copied in -- no
        dequantized temporary, concatenation or gather of the dense size (the per-step cost of this storage;
        nothing beyond the compact form is held between steps). Same values as dequantize-then-reorder."""
        b, h, s, d = self.kf.shape
        n, t = self.n, tail_k.shape[2]
        idx = self.idx.long()
        rest = torch.ones(b, h, n, dtype=torch.bool, device=self.device).scatter_(-1, idx, False)
        # each entry's row among the quantized ones (B*Hkv*R, in order); a salient entry takes a neighbour's
        # row (overwritten below)
        src = (rest.view(-1).cumsum(0) - 1).clamp_(min=0)
        out = []
        for full, q, c, tail in ((self.kf, self.kq, self.kc, tail_k), (self.vf, self.vq, None, tail_v)):
            dense = torch.empty(b, h, n + t, d, dtype=self.dtype, device=self.device)
            pre = dense[:, :, :n]
            work = pre if self.dtype == torch.float32 else torch.empty(b, h, n, d, device=self.device)
            if s < n:
                dequantize_into(_placed(q, src, (b, h, n)), work)
            if c is not None:
                work.mul_(c.float())
            if work is not pre:
                pre.copy_(work)
            pre.scatter_(2, idx[..., None].expand(b, h, s, d), full)
            dense[:, :, n:] = tail
            out.append(dense)
        return out[0], out[1]

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self._dense(self.keys, self.values)

    def dense_kv(self) -> tuple[Tensor, Tensor]:
        return self._dense(self.keys, self.values)

    def get_seq_length(self) -> int:
        return self.n + self.keys.shape[-2]

    def nbytes(self) -> int:
        held = (self.kf, self.vf, self.idx, self.keys, self.values) + (() if self.kc is None else (self.kc,))
        full = sum(t.numel() * t.element_size() for t in held)
        return full + self.kq.nbytes() + self.vq.nbytes()

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("cropping a mixed-precision KV layer is not supported")

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("beam search is not supported with mixed-precision KV storage")


def _placed(q: QTensor, src: Tensor, shape: tuple[int, int, int]) -> QTensor:
    """``q``'s (B, Hkv, R, .) codes and parameters laid out as (B, Hkv, L, .): entry i takes row ``src[i]``."""
    def place(x: Tensor) -> Tensor:
        return x.reshape(-1, x.shape[-1]).index_select(0, src).view(*shape, x.shape[-1])
    return QTensor(place(q.codes), place(q.scale), place(q.zero), q.bits, q.group)
