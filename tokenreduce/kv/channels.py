"""Key-channel-pruned KV storage (ThinK): a compressed prefix whose keys keep only some channels.

:class:`ChannelLayer` holds, per (sequence, KV head), the prefix keys' kept channels (B, Hkv, L, Dk) with
their channel indices (B, Hkv, Dk, int16), the values whole, and the tokens fed after compression in
full (as ThinK keeps new tokens' keys whole). Attention gets dense tensors: on every ``update`` the pruned
channels are filled with zeros -- a query then sees ``q . k`` over the kept channels only, which is the
pruned model -- and the dense copy is dropped after the forward, so only the compact form is held
between steps. Any attention implementation (SDPA, flash, eager) keeps working.
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformers.cache_utils import DynamicLayer


class ChannelLayer(DynamicLayer):
    """A prefix with ``channels`` (B, Hkv, Dk) of its keys' D channels kept, and a full-precision tail."""

    def __init__(self, keys: Tensor, values: Tensor, channels: Tensor):
        super().__init__()
        b, h, n, d = keys.shape
        self.d, self.n = d, n
        self.channels = channels.to(torch.int16)
        self.kp = keys.gather(-1, channels[:, :, None, :].expand(b, h, n, channels.shape[-1])).contiguous()
        self.vp = values
        self.keys, self.values = keys[..., :0, :], values[..., :0, :]  # tokens fed after compression
        self.device, self.dtype, self.is_initialized = keys.device, keys.dtype, True

    def prefix_keys(self) -> Tensor:
        """The prefix keys (B, Hkv, L, D) with the pruned channels zero."""
        b, h, n, k = self.kp.shape
        idx = self.channels.long()[:, :, None, :].expand(b, h, n, k)
        return self.kp.new_zeros(b, h, n, self.d).scatter_(-1, idx, self.kp)

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs) -> tuple[Tensor, Tensor]:
        self.keys = torch.cat([self.keys, key_states], dim=-2)
        self.values = torch.cat([self.values, value_states], dim=-2)
        return self.dense_kv()

    def dense_kv(self) -> tuple[Tensor, Tensor]:
        return torch.cat([self.prefix_keys(), self.keys], dim=-2), torch.cat([self.vp, self.values], dim=-2)

    def to_dense(self) -> DynamicLayer:
        """A plain layer holding :meth:`dense_kv` (pruned channels zero), to be pressed again (the next chunk
        of a chunked prefill)."""
        layer = DynamicLayer()
        layer.keys, layer.values = self.dense_kv()
        layer.device, layer.dtype, layer.is_initialized = self.device, self.dtype, True
        return layer

    def get_seq_length(self) -> int:
        return self.n + self.keys.shape[-2]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.kp, self.channels, self.vp, self.keys, self.values))

    def crop(self, tokens_to_remove: int) -> None:
        raise NotImplementedError("cropping a channel-pruned KV layer is not supported")

    def reorder_cache(self, beam_idx):
        raise NotImplementedError("beam search is not supported with channel-pruned KV storage")
