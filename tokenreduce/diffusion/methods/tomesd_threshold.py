"""tomesd with a similarity threshold: only pairs whose cosine similarity exceeds ``threshold`` merge.

The request of tomesd issue #40; the matching is the one of Bolya & Hoffman, "Token Merging for
Fast Stable Diffusion" (CVPRW 2023, arXiv:2303.17604), with ``ratio`` as the upper bound on merges.
Rows may then keep different numbers of tokens; each distinct count runs as its own rectangular
batch, so a row's result does not depend on the others (no padding, no mask).
"""

from __future__ import annotations

from dataclasses import dataclass

from ...registry import check_range
from .base import register
from .tomesd import ToMeSD


@register("tomesd-threshold")
@dataclass(frozen=True)
class ToMeSDThreshold(ToMeSD):
    """``threshold``: the cosine similarity a pair must exceed to merge; ``ratio``: at most this fraction."""

    threshold: float = 0.9

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "threshold", self.threshold, -1.0, 1.0, hint=" (cosine similarity)")

    def threshold_value(self) -> float | None:
        return float(self.threshold)
