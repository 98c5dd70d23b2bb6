"""Spatial pooling baseline: average-pool the patch grid once, like a strided downsampling layer.

A baseline rather than a paper's method: the fixed, content-blind average pooling of pyramid ViTs
and of visual-token downsampling in VLMs, which (with random pruning) any learned or adaptive
reduction should beat. At layer ``at_layer`` every ``kh × kw`` window of the row-major patch grid
becomes its mean (windows cut by the border average fewer tokens); prefix tokens ([CLS],
distillation, registers) are kept. The grid is only known while tokens are still in grid order, so
this is the one reduction of the model, and rows must hold a full grid (no padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ...core.matching import grid_pool
from ...core.schedule import per_row
from .base import LayerTensors, Method, Plan, register


def window_for_keep(keep: float) -> tuple[int, int]:
    """The most square window whose area is ``round(1 / keep)`` (keep 0.25 → 2×2, 0.5 → 1×2)."""
    k = max(1, round(1.0 / keep))
    kh = max(d for d in range(1, math.isqrt(k) + 1) if k % d == 0)
    return kh, k // kh


def grid_of(n: int, grid: tuple[int, int] | None) -> tuple[int, int]:
    if grid is not None:
        if grid[0] * grid[1] != n:
            raise ValueError(f"pool: grid {grid} has {grid[0] * grid[1]} patches but rows have {n}")
        return grid
    side = math.isqrt(n)
    if side * side != n:
        raise ValueError(f"pool: {n} patch tokens are not a square grid; pass grid=(height, width)")
    return side, side


@dataclass(frozen=True)
class GridSchedule:
    """Budget of one pooling step: every row loses ``n − pooled(n)`` tokens at ``layer``."""

    layer: int
    window: tuple[int, int]
    grid: tuple[int, int] | None

    def check(self, num_layers: int) -> None:
        if self.layer >= num_layers:
            raise ValueError(f"pool: at_layer {self.layer} out of range for a model with {num_layers} layers")

    def is_identity(self) -> bool:
        return self.window == (1, 1)

    def removals(self, n0: Tensor, num_layers: int, cap: float = 1.0) -> Tensor:
        return per_row(self.removals_static, n0, num_layers, cap)

    def removals_static(self, n0: int, num_layers: int, cap: float = 1.0) -> list[int]:
        out = [0] * num_layers
        if not self.is_identity():
            h, w = grid_of(n0, self.grid)
            out[self.layer] = n0 - (-(-h // self.window[0])) * (-(-w // self.window[1]))
        return out


@register("pool")
@dataclass(frozen=True)
class GridPool(Method):
    """Average-pool the patch grid in ``window`` blocks (or the window of area 1/keep) at one layer."""

    window: int | tuple[int, int] | None = None
    at_layer: int = 0
    grid: tuple[int, int] | None = None  # default: a square grid of the row's patch tokens
    prop_attn: bool = False

    requires_grid: ClassVar[bool] = True  # image patch grids only: text benchmarks should skip it

    def __post_init__(self) -> None:
        if self.r is not None or self.layers is not None or self.min_tokens:
            raise ValueError("pool: set window (or keep) and at_layer; r, layers and min_tokens do not apply")
        if (self.window is None) == (self.keep is None):
            raise ValueError("pool: give exactly one of window (e.g. 2 or (2, 2)) or keep (fraction kept, in (0, 1])")
        if self.keep is not None and not 0.0 < float(self.keep) <= 1.0:
            raise ValueError(f"pool: keep must be in (0, 1], got {self.keep}")
        w = self._window()
        if self.keep is not None and float(self.keep) < 1.0 and w == (1, 1):
            raise ValueError(
                f"pool: keep={self.keep} rounds to a 1x1 window, which pools nothing; give keep <= 0.66 "
                "(a 1x2 window keeps half) or keep=1.0 for no reduction"
            )
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in w):
            raise ValueError(f"pool: window must be positive ints, got {self.window!r}")
        if isinstance(self.at_layer, bool) or not isinstance(self.at_layer, int) or self.at_layer < 0:
            raise ValueError(f"pool: at_layer must be a non-negative int, got {self.at_layer!r}")
        if self.protected is not None and (not isinstance(self.protected, int) or self.protected < 0):
            raise ValueError(f"pool: protected must be a non-negative int, got {self.protected!r}")

    def _window(self) -> tuple[int, int]:
        if self.window is None:
            return window_for_keep(float(self.keep))
        return (self.window, self.window) if isinstance(self.window, int) else tuple(self.window)

    def budget(self) -> GridSchedule:  # type: ignore[override]
        g = tuple(self.grid) if self.grid is not None else None
        return GridSchedule(self.at_layer, self._window(), g)

    @property
    def proportional_attention(self) -> bool:  # type: ignore[override]
        return self.prop_attn

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        b, n = t.sizes.shape
        p = t.protected
        patches = t.sizes[:, p:]
        if not bool((patches == 1).all()):
            raise RuntimeError(
                "pool: tokens are no longer a full patch grid in order (padding or an earlier reduction); "
                "pooling must be the model's first and only reduction, on unpadded images"
            )
        dst, n_out = grid_pool(n, p, grid_of(n - p, self.grid), self._window(), t.sizes.device)
        return Plan(dst.expand(b, n), n_out)
