"""VisPruner: Zhang et al., "Beyond Text-Visual Attention: Exploiting Visual Cues for Effective Token Pruning in
VLMs", arXiv 2412.01818 (ICCV 2025). Important tokens by the vision tower's [CLS] attention, plus diverse tokens:
duplicates removed from the rest by repeated pairwise matching."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...core.diversity import cosine_self, prune_pairwise_duplicates
from ...registry import check_range
from .base import BeforeMethod, register


@register
@dataclass(frozen=True)
class VisPruner(BeforeMethod):
    """VisPruner (Zhang et al., arXiv 2412.01818): ``important`` share of the budget by [CLS] attention; the
    rest, taken in [CLS]-attention order, shed duplicates in rounds: split alternately into A and B, drop the
    (at most ``step``) A tokens most similar to a B token, until the diverse budget remains. Similarity is
    cosine of the projected embeddings (the paper uses the tower's features before the projector)."""

    important: float = 0.5
    step: int = 8
    thumbnail_guidance: bool = False  # LLaVA-NeXT: crop budgets follow the thumbnail's attention
    name: ClassVar[str] = "vispruner"
    needs_cls: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "important", self.important, 0.0, 1.0, hint=" (share of the budget by [CLS] attention)")
        check_range(self.name, "step", self.step, 1, hint=" (duplicates dropped per round at most)")

    def split(self, k: int) -> int:
        """Important tokens out of a budget of ``k``; the rest are diverse."""
        return min(k, round(self.important * k))

    def reduce(self, emb, grid, cls, k):
        ki = self.split(k)
        order = torch.sort(cls.float(), descending=True, stable=True).indices
        rest = order[ki:]
        if k > ki:
            local = torch.arange(len(rest), device=emb.device)
            diverse = rest[prune_pairwise_duplicates(cosine_self(emb[rest]), local, k - ki, self.step)]
        else:
            diverse = rest[:0]
        idx = torch.sort(torch.cat([order[:ki], diverse])).values
        return idx, emb[idx]

    def image_macs(self, n, k, hidden, vision_width):
        rest = n - self.split(k)
        return super().image_macs(n, k, hidden, vision_width) + (rest * rest * hidden if k > self.split(k) else 0)
