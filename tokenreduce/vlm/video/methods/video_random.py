"""Random video tokens: a baseline with no paper; the same subset for every video of a shape (core.noise)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ....core.noise import random_subset
from ....registry import check_range
from ...methods.base import register
from ..base import VideoMethod


@register
@dataclass(frozen=True)
class VideoRandom(VideoMethod):
    """Baseline: a random subset of the video's tokens across all frames (independent of the batch)."""

    seed: int = 0
    name: ClassVar[str] = "video-random"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "seed", self.seed, 0, hint=" (noise seed)")

    def reduce_video(self, unit):
        idx = random_subset(unit.emb.shape[0], unit.k, self.seed, device=unit.emb.device)
        return idx, unit.emb[idx]
