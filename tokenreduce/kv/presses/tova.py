"""TOVA: keep what the last token attends to, averaged over the layer's heads.

M. Oren, M. Hassid, N. Yarden, Y. Adi, R. Schwartz, "Transformers are Multi-State RNNs", EMNLP 2024
(arXiv:2401.06104). The last query's attention row is recomputed (no eager attention); every KV head
keeps the same tokens, and the last token itself is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import LayerView, ScoringPress, Shape, register, window_macs
from .common import recent_bonus


@register("tova")
@dataclass(frozen=True)
class TOVA(ScoringPress):
    """Attention of the last query averaged over all heads of the layer (same tokens for every head)."""

    query_aware = True

    def score(self, view: LayerView) -> Tensor:
        a = view.window_attention(1)[:, :, 0].mean(dim=1, keepdim=True)  # (B, 1, N)
        s = a.expand(-1, view.n_kv_heads, -1)
        return recent_bonus(view, s, torch.ones(s.shape[0], dtype=torch.long, device=s.device))

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """The last query projected again and its logits against every key."""
        return window_macs(shape, 1, n)
