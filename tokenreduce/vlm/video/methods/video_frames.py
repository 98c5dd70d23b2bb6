"""Uniform frame subsampling: a baseline (what most video LLMs do before the vision tower, here applied to the
encoded frames): keep every token of evenly spaced frames, as many whole frames as the budget holds."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...methods.base import register
from ..base import VideoMethod


def frames_kept(frames: int, per_frame: int, k: int) -> list[int]:
    """Evenly spaced frame indices (the middle of each of f equal spans), f = k // per_frame in [1, frames]."""
    f = max(1, min(frames, k // per_frame))
    return [int((2 * i + 1) * frames // (2 * f)) for i in range(f)]


@register
@dataclass(frozen=True)
class VideoFrames(VideoMethod):
    """Baseline: whole, evenly spaced frames; rounds the budget down to whole frames (at least one)."""

    name: ClassVar[str] = "video-frames"

    def kept_video(self, frames, grid):
        k = self.video_budget(frames, grid)
        p = grid[0] * grid[1]
        return frames * p if k >= frames * p else len(frames_kept(frames, p, k)) * p

    def reduce_video(self, unit):
        p = unit.grid[0] * unit.grid[1]
        keep = torch.tensor(frames_kept(unit.frames, p, unit.k), device=unit.emb.device)
        idx = (keep[:, None] * p + torch.arange(p, device=unit.emb.device)).reshape(-1)
        return idx, unit.emb[idx]
