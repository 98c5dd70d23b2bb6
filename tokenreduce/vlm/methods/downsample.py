"""Image downsampling baseline: pool the patch grid before the projector to the budget's grid. VTC-Bench (Liao et
al., "Are We Using the Right Benchmark: An Evaluation Framework for Visual Token Compression Methods", arXiv
2510.07143) found plain downsampling beating many published visual-token methods."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import reduce
from .base import BeforeMethod, register

MODES = ("area", "bilinear")


def cell_centres(grid: tuple[int, int], out: tuple[int, int], device=None) -> Tensor:
    """Index of the token at the centre of each cell when an (h, w) grid is pooled to (a, b) cells."""
    (h, w), (a, b) = grid, out
    rows = [((i * h) // a + (-((-(i + 1) * h) // a)) - 1) // 2 for i in range(a)]
    cols = [((j * w) // b + (-((-(j + 1) * w) // b)) - 1) // 2 for j in range(b)]
    return torch.tensor([r * w + c for r in rows for c in cols], device=device)


def cell_of(grid: tuple[int, int], out: tuple[int, int], device=None) -> Tensor:
    """Cell (row-major over (a, b)) each token of an (h, w) grid falls in (nearest, for spreading cells back)."""
    (h, w), (a, b) = grid, out
    r = torch.arange(h, device=device) * a // h
    c = torch.arange(w, device=device) * b // w
    return (r[:, None] * b + c[None, :]).reshape(-1)


def _square(n: int) -> tuple[int, int] | None:
    """LLaVA-1.5's square patch grid of ``n`` tokens (None if ``n`` is not a square)."""
    g = round(n**0.5)
    return (g, g) if g * g == n else None


@register
@dataclass(frozen=True)
class Downsample(BeforeMethod):
    """Baseline: the vision tower's patch features, as an (h, w) grid, resized to the largest grid within the
    budget (``mode="area"``: average pooling; ``"bilinear"``: antialiased bilinear) before the projector, which
    then projects only the pooled cells. LLaVA-1.5 only (pooling happens on the projector's input).

    The LLM's placeholder count is fixed, so each patch carries its cell's projected vector until layer 0, which
    keeps one token per cell, at the cell's centre position (as ``visual-pool``, which pools after the
    projector instead)."""

    mode: str = "area"
    name: ClassVar[str] = "downsample"
    before_projector: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {MODES}, got {self.mode!r}")

    def cells(self, grid: tuple[int, int]) -> tuple[int, int] | None:
        """The pooled grid for an image of ``grid`` (None: the budget keeps every patch)."""
        n = grid[0] * grid[1]
        k = self.budget(n)
        return None if k >= n else reduce.pool_shape(grid[0], grid[1], k)

    def pool_features(self, feats: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, h*w, C) patch features -> (B, a*b, C) pooled cells (unchanged when nothing is dropped)."""
        out = self.cells(grid)
        if out is None or feats.shape[1] != grid[0] * grid[1]:
            return feats
        b, _n, c = feats.shape
        x = feats.transpose(1, 2).reshape(b, c, *grid)
        work = x.to(torch.promote_types(x.dtype, torch.float32))
        if self.mode == "area":
            y = F.adaptive_avg_pool2d(work, out)
        else:
            y = F.interpolate(work, size=out, mode="bilinear", align_corners=False, antialias=True)
        return y.to(x.dtype).reshape(b, c, -1).transpose(1, 2).contiguous()

    def unpool_features(self, projected: Tensor, grid: tuple[int, int]) -> Tensor:
        """(B, a*b, D) projected cells -> (B, h*w, D): each patch takes its cell's vector."""
        out = self.cells(grid)
        if out is None or projected.shape[1] != out[0] * out[1]:
            return projected
        full = projected[:, cell_of(grid, out, projected.device)]
        full[:, cell_centres(grid, out, projected.device)] = projected  # the kept token is its own cell's
        return full

    def reduce(self, emb, grid, cls, k):
        out = self.cells(grid) or grid
        idx = cell_centres(grid, out, emb.device)
        return idx, emb[idx]

    def image_macs(self, n, k, hidden, vision_width):
        """Negative: the projector (LLaVA's Linear(vision, hidden), GELU, Linear(hidden, hidden)) projects only
        the pooled cells, not every patch (pooling itself is additions)."""
        g = _square(n)
        cells = k if g is None else self.kept(g)
        return -(n - cells) * (vision_width * hidden + hidden * hidden)

    def kept(self, grid):
        out = self.cells(grid)
        return grid[0] * grid[1] if out is None else out[0] * out[1]
