"""Spatial pooling per frame: a baseline (LLaVA-NeXT-Video and PLLaVA pool each frame's grid): every frame's
(rows, cols) grid is average-pooled to an equal share of the budget (at least one cell per frame)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ... import reduce
from ...methods.base import register
from ..base import VideoMethod


@register
@dataclass(frozen=True)
class VideoPool(VideoMethod):
    """Baseline: 2-D average pooling of each frame to ``budget // frames`` cells (the largest grid within it)."""

    name: ClassVar[str] = "video-pool"
    merges: ClassVar[bool] = True

    def _cells(self, frames: int, grid: tuple[int, int]) -> tuple[int, int]:
        k = self.video_budget(frames, grid)
        return reduce.pool_shape(grid[0], grid[1], max(1, k // frames))

    def kept_video(self, frames, grid):
        k = self.video_budget(frames, grid)
        if k >= frames * grid[0] * grid[1]:
            return k
        a, b = self._cells(frames, grid)
        return frames * a * b

    def reduce_video(self, unit):
        t, (h, w), p = unit.frames, unit.grid, unit.grid[0] * unit.grid[1]
        a, b = self._cells(t, unit.grid)
        idx, emb = [], []
        for f in range(t):
            i, e = reduce.pool(unit.emb[f * p : (f + 1) * p], (h, w), a * b)
            idx.append(i + f * p)
            emb.append(e)
        return torch.cat(idx), torch.cat(emb)
