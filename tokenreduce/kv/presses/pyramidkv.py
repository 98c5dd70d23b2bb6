"""PyramidKV: per-layer budgets falling linearly with depth, averaging ``keep``.

Z. Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information Funneling",
arXiv:2406.02069 (2024). Lower layers attend broadly and keep more, upper layers keep less; within a
layer the heads split evenly (``min_share=1.0``) by default. Scores come from any plain scoring press
(SnapKV's by default, ``PyramidKV(scorer=SnapKV(window=32))``); storage is ragged (per-layer lengths).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import register
from .common import BudgetPress


@register("pyramidkv")
@dataclass(frozen=True)
class PyramidKV(BudgetPress):
    """Layer ``l`` of ``L`` keeps ``keep * (1 + slope * (1 - 2 l / (L - 1)))`` (the mean stays ``keep``)."""

    slope: float = 0.5  # first layer keeps keep*(1+slope), last keep*(1-slope)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.slope < 1.0:
            raise ValueError(f"pyramidkv: slope must be in [0, 1), got {self.slope!r}")

    def layer_keep(self, layer: int, n_layers: int) -> float:
        frac = 0.5 if n_layers == 1 else layer / (n_layers - 1)
        keep = float(self.keep)
        slope = min(self.slope, (1.0 - keep) / keep)  # never above 1: the mean stays `keep`
        return keep * (1.0 + slope * (1.0 - 2.0 * frac))
