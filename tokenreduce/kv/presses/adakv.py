"""AdaKV: a layer's budget shared among its KV heads by score, stored per head (ragged).

Y. Feng, J. Lv, Y. Cao, X. Xie, S. K. Zhou, "Ada-KV: Optimizing KV Cache Eviction by Adaptive Budget
Allocation for Efficient LLM Inference", arXiv:2407.11550 (2024). A layer's budget (keep x N x heads)
goes to the best-scored entries over *all* its KV heads, each head guaranteed a ``min_share`` of an
even split (the paper's safeguard). Scores come from any plain scoring press:
``AdaKV(scorer=SnapKV(window=64, kernel=11))``, or ``make_press("adakv", kernel=11)`` (SnapKV's by default).
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import register
from .common import BudgetPress


@register("adakv")
@dataclass(frozen=True)
class AdaKV(BudgetPress):
    """Per-head budgets from ``scorer``'s scores, at least ``min_share`` of an even split per head."""

    min_share: float = 0.2
