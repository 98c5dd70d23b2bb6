"""H2O: heavy hitters (attention accumulated over all prompt queries) plus the most recent tokens.

Z. Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language
Models", NeurIPS 2023 (arXiv:2306.14048). The column sums are accumulated 256 queries at a time from
recomputed attention (:attr:`LayerView.column_mass`); no eager attention is needed.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .. import scoring
from ..select import row_budgets
from .base import LayerView, ScoringPress, Shape, register, window_macs
from .common import recent_bonus


@register("h2o")
@dataclass(frozen=True)
class H2O(ScoringPress):
    """Accumulated attention over all prompt queries; ``recent_share`` of each row's budget is recent tokens."""

    recent_share: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.recent_share <= 1.0:
            raise ValueError(f"h2o: recent_share must be in [0, 1], got {self.recent_share!r}")

    def score(self, view: LayerView) -> Tensor:
        s = scoring.group_mean(view.column_mass, view.n_kv_heads)
        k = row_budgets(view.valid, self.layer_keep(view.layer, view.n_layers))
        return recent_bonus(view, s, (k.double() * self.recent_share).floor().long())

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """Every query projected again and its logits against every key (in chunks; no causal halving)."""
        return window_macs(shape, n, n)
