"""Spatial pooling of visual tokens: a baseline (2-D average pooling of the token grid, as LLaVA-NeXT's video
variant and PLLaVA pool frames); the output grid is the largest within the budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import reduce
from .base import BeforeMethod, register


@register
@dataclass(frozen=True)
class VisualPool(BeforeMethod):
    """Baseline: 2-D average pooling of the token grid to at most the budget (LLaVA-NeXT/PLLaVA-style)."""

    name: ClassVar[str] = "visual-pool"

    def reduce(self, emb, grid, cls, k):
        return reduce.pool(emb, grid, k)

    def kept(self, grid):
        k = self.budget(grid[0] * grid[1])
        if k >= grid[0] * grid[1]:
            return k
        a, b = reduce.pool_shape(grid[0], grid[1], k)
        return a * b
