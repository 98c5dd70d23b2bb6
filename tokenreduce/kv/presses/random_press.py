"""Random eviction: the baseline every press must beat.

Seeded, and the noise is indexed by each token's rank among the row's real tokens, so runs are
reproducible and a row keeps the same entries in any batch.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from ..select import row_noise
from .base import LayerView, ScoringPress, Shape, register


@register("random")
@dataclass(frozen=True)
class RandomPress(ScoringPress):
    """Uniform scores from ``seed`` (a different stream per layer)."""

    seed: int = 0

    def score(self, view: LayerView) -> Tensor:
        return row_noise(view.valid, (view.n_kv_heads,), self.seed * 1000 + view.layer)

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """0: seeded noise."""
        return 0
