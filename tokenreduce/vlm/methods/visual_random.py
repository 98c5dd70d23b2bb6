"""Random visual tokens: a baseline with no paper; the same subset for every image of a size."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...registry import check_range
from .base import BeforeMethod, register


@register
@dataclass(frozen=True)
class VisualRandom(BeforeMethod):
    """Baseline: a random subset, the same for every image of a given size (so independent of the batch)."""

    seed: int = 0
    name: ClassVar[str] = "visual-random"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "seed", self.seed, 0, hint=" (torch.Generator seed)")

    def reduce(self, emb, grid, cls, k):
        g = torch.Generator().manual_seed(self.seed)
        idx = torch.sort(torch.randperm(emb.shape[0], generator=g)[:k]).values.to(emb.device)
        return idx, emb[idx]
