"""ToDo: Token Downsampling for Efficient Generation of High-Resolution Images (Smith et al., 2024,
arXiv:2402.13573).

In the self-attention of the high-resolution blocks, every query is kept and the keys and values are
computed from the tokens average-pooled over ``stride`` cells (2 x 2: a quarter of the keys). The
output keeps its length, so there is nothing to unmerge, and the attention itself stays one fused
kernel call. Pooling the inputs of the key/value projections equals pooling the keys and values
(the projections are linear). ``stride=(1, 1)`` leaves the model unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import BlockTokens, PoolPlan, StrideMethod, register


@register("todo")
@dataclass(frozen=True)
class ToDo(StrideMethod):
    """``stride = (sx, sy)``: the key/value pooling window (keys kept: about 1/(sx*sy))."""

    def tokens(self, n, grid, dim, index, depth):
        """Queries stay ``n``; keys/values are the pooled cells ``ceil(h/sy) * ceil(w/sx)``; pooling is
        elementwise (no matmul MACs)."""
        if self.stride == (1, 1):
            return BlockTokens.full(n)
        sx, sy = self.stride
        return BlockTokens(n, -(-grid[0] // sy) * -(-grid[1] // sx), n, n, 0)

    def plan(self, metric, grid, keys, stream):
        if self.stride == (1, 1):
            return None
        return PoolPlan(grid, self.stride)
