"""Visual ToMe: bipartite soft matching of the visual embeddings before the LLM, repeated until the budget, as
in AIM's first stage (Zhong et al., "AIM: Adaptive Inference of Multi-Modal LLMs via Token Merging and
Pruning", arXiv 2412.03248) after ToMe (Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import reduce
from .base import BeforeMethod, Unit, register


@register
@dataclass(frozen=True)
class VisualToMe(BeforeMethod):
    """Bipartite merging of visual tokens before the LLM, as in AIM's first stage (Zhong et al., arXiv
    2412.03248) after ToMe (Bolya et al., ICLR 2023)."""

    name: ClassVar[str] = "visual-tome"

    def reduce(self, emb, grid, cls, k):
        idx, out = reduce.bipartite_merge(emb[None], k)
        return idx[0], out[0]

    def reduce_all(self, units: list[Unit]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Units of one size and budget are merged as one batch (rows never interact)."""
        out: list = [None] * len(units)
        batches: dict[tuple, list[int]] = {}
        for i, u in enumerate(units):
            batches.setdefault((u.emb.shape, u.emb.dtype, u.emb.device, u.k), []).append(i)
        for (_shape, _dtype, _device, k), members in batches.items():
            idx, merged = reduce.bipartite_merge(torch.stack([units[i].emb for i in members]), k)
            for row, i in enumerate(members):
                out[i] = (idx[row], merged[row])
        return out

    def image_macs(self, n, k, hidden, vision_width):
        total = 0
        while n > k:  # one similarity product |A| x |B| per round
            a, b = (n + 1) // 2, n // 2
            total += a * b * hidden
            n -= min(n - k, a, b)
        return total
