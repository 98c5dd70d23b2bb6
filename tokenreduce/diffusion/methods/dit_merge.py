"""dit-merge: token merging across the blocks of a diffusion transformer, unmerged before the final layer.

The patch tokens entering block ``start`` are merged once -- ToMe's bipartite soft matching (Bolya
et al., "Token Merging: Your ViT But Faster", ICLR 2023, arXiv:2210.09461) with tomesd's destinations,
one per ``stride`` cell chosen at random (Bolya & Hoffman, CVPRW 2023, arXiv:2303.17604) -- the blocks
``start`` .. ``end`` run on the merged tokens, and after block ``end`` (default: the last) every token
takes its slot's state again, so the final norm/projection and the unpatchify see the full grid. This
is the setting of the DiT merging line of work (merge inside the transformer, unmerge before the
output), not a reproduction of one paper's schedule. Destinations are keyed by (seed, the row's
timestep) as in ``tomesd``, so both classifier-free-guidance halves get the same ones and a batch
equals its rows alone. Only for DiT-style transformers (a U-Net's resolution changes between blocks).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...registry import check_range
from .base import BlockTokens, StrideMethod, bipartite_merge_2d, register


@register("dit-merge")
@dataclass(frozen=True)
class DiTMerge(StrideMethod):
    """``ratio``: fraction of the patch tokens merged away (at most the stride's cap) for blocks
    ``start`` .. ``end`` (block indices; ``end`` < 0 counts from the last block)."""

    ratio: float = 0.5
    start: int = 0
    end: int = -1
    use_rand: bool = True
    seed: int = 0

    families: ClassVar[tuple[str, ...]] = ("transformer",)

    def __post_init__(self) -> None:
        super().__post_init__()
        sx, sy = self.stride
        check_range(self.name, "ratio", self.ratio, 0.0, self.cap,
                    hint=f" (the cap 1 - 1/(sx*sy) = {self.cap:g} for stride ({sx}, {sy}): each cell keeps one token)")
        check_range(self.name, "start", self.start, 0, hint=" (index of the first merged block)")
        check_range(self.name, "seed", self.seed, 0, hint=" (noise seed)")

    def span(self, depth: int) -> tuple[int, int]:
        """(first, last) block of the merged stretch in a model of ``depth`` blocks; an error names the range."""
        end = self.end if self.end >= 0 else depth + self.end
        if not 0 <= self.start <= end < depth:
            raise ValueError(f"{self.name}: need 0 <= start <= end < {depth} (this model's blocks; end < 0 counts "
                             f"from the last), got start={self.start}, end={self.end}")
        return self.start, end

    def choose(self, grid, keys, stream):
        if not self.use_rand:
            return torch.zeros(1, *self.cells(grid), dtype=torch.long, device=keys.device)
        return super().choose(grid, keys, stream)

    def tokens(self, n, grid, dim, index, depth):
        """Blocks ``start`` .. ``end`` see ``n - r`` tokens everywhere; the matching (``n_src * n_dst * dim``)
        runs once, at ``start``."""
        first, last = self.span(depth)
        hsy, wsx = self.cells(grid)
        r = min(int(n * self.ratio), n - hsy * wsx)
        if r <= 0 or not first <= index <= last:
            return BlockTokens.full(n)
        m = n - r
        return BlockTokens(m, m, m, m, (n - hsy * wsx) * hsy * wsx * dim if index == first else 0)

    def plan(self, metric, grid, keys, stream):
        return None  # nothing inside a block: see plan_span

    def plan_span(self, metric: Tensor, grid: tuple[int, int], keys: Tensor) -> tuple[Tensor, int] | None:
        """The assignment (B, N) and the merged length for the tokens entering block ``start``; None = no merge."""
        n = metric.shape[1]
        hsy, wsx = self.cells(grid)
        r = min(int(n * self.ratio), n - hsy * wsx)
        if r <= 0:
            return None
        dst, _ = bipartite_merge_2d(metric, grid, self.stride, r, self.choose(grid, keys, self.start))
        return dst, n - r
