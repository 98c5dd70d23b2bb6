"""Text-guided pruning after SparseVLM: Zhang et al., "SparseVLM: Visual Token Sparsification for Efficient
Vision-Language Model Inference", ICML 2025. The text tokens after the image that attend to it most rate the
visual tokens (simplified: one pruning layer, no token recycling)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...kv.scoring import window_attention, window_keys, window_queries
from ...registry import check_range
from .base import InsideMethod, register


@register
@dataclass(frozen=True)
class TextGuided(InsideMethod):
    """Text-guided pruning after SparseVLM (Zhang et al., ICML 2025): the text tokens after the image that
    attend to it most (above-mean visual mass) rate the visual tokens by their mean attention."""

    layer: int = 2
    name: ClassVar[str] = "text-guided"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "layer", self.layer, 1, hint=" (decoder layer the pruning happens before)")

    def stages(self, depth):
        return (self.layer,)

    def rating_queries(self, text_after):
        return text_after

    def scores(self, attn, x, cos, sin, vis, valid):
        """Mean attention of the raters: text after the last visual token whose visual mass is above the
        raters' mean (the last token alone when no text follows the image)."""
        b, n = vis.shape
        pos = torch.arange(n, device=vis.device)
        last_vis = torch.where(vis, pos, -1).max(1).values  # (B,)
        w = max(1, int((n - 1 - last_vis).max()))
        keys = window_keys(attn, x, cos, sin)
        q = window_queries(attn, x[:, -w:], cos[:, -w:], sin[:, -w:])
        a = window_attention(q, keys, attn.scaling, valid).mean(1)  # (B, w, N)
        rater = pos[-w:][None] > last_vis[:, None]
        if valid is not None:
            rater &= valid[:, -w:]
        mass = (a * vis[:, None].float()).sum(-1)
        mean = (mass * rater).sum(1, keepdim=True) / rater.sum(1, keepdim=True).clamp(min=1)
        rater &= mass >= mean
        rater[:, -1] |= ~rater.any(1)  # no text after the image: the last token rates, as in FastV
        return (a * rater[..., None]).sum(1) / rater.sum(1, keepdim=True).clamp(min=1)
