"""Random visual tokens: a baseline with no paper; the same subset for every image of a size (core.noise)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...core.noise import random_subset
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
        check_range(self.name, "seed", self.seed, 0, hint=" (noise seed)")

    def reduce(self, emb, grid, cls, k):
        idx = random_subset(emb.shape[0], k, self.seed, device=emb.device)
        return idx, emb[idx]
