"""SnapKV: attention of an observation window of the last queries, max-pooled over neighbours.

Y. Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024
(arXiv:2404.14469). The window's attention rows are recomputed from the layer's queries and the cached
keys (:mod:`tokenreduce.kv.scoring`), so no eager attention is needed; the window itself is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import scoring
from .base import LayerView, ScoringPress, Shape, register, window_macs
from .common import check_window, recent_bonus


@register("snapkv")
@dataclass(frozen=True)
class SnapKV(ScoringPress):
    """Mean attention of the last ``window`` queries, max-pooled over ``kernel`` neighbours, GQA-averaged."""

    window: int = 64
    kernel: int = 5
    query_aware = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_window(self.name, self.window, self.kernel)

    def score(self, view: LayerView) -> Tensor:
        a = view.window_attention(self.window).mean(dim=2)  # (B, H, N)
        s = scoring.group_mean(scoring.pool1d(a, self.kernel), view.n_kv_heads)
        w = torch.full((s.shape[0],), min(self.window, view.hidden.shape[1]), device=s.device)
        return recent_bonus(view, s, w)  # the window itself is always kept

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """MACs SnapKV adds to one layer's prefill of ``n`` tokens: the window's queries projected again,
        and their logits against every cached key (softmax, pooling and top-k are not MACs)."""
        return window_macs(shape, min(self.window, n), n)
