"""tomesd: Token Merging for Stable Diffusion (Bolya & Hoffman, CVPRW 2023, arXiv:2303.17604).

Around the self-attention (and optionally the cross-attention and the MLP) of each transformer block
at ``max_downsample`` or finer: merge -> sub-module -> unmerge. Destinations are one token per
``stride`` cell; the other tokens each propose their most similar destination and the
``ratio * N`` best proposals merge (a mean); after the sub-module every token takes its slot's output.

Differences from the reference package (PyPI ``tomesd``), all about the random choice of destinations:
the reference draws one choice per block call from a torch generator shared by the whole batch (and
turns randomness off when the batch is odd, so a CFG pair and a single image are treated differently);
here the choice comes from the core's seeded noise keyed by (seed, the row's timestep, the block), so
it is deterministic, changes from step to step, and every row -- in particular both classifier-free
guidance halves, which share a timestep -- gets the same destinations alone or in any batch. Given the
same choice (``choose`` is the injection point), the merge equals the reference's.
A ratio above the stride's cap ``1 - 1/(sx*sy)`` is an error, not a silent clamp.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ...registry import check_range
from .base import BlockTokens, MergePlan, StrideMethod, bipartite_merge_2d, register


@register("tomesd")
@dataclass(frozen=True)
class ToMeSD(StrideMethod):
    """``ratio``: fraction of a block's tokens merged away (at most the stride's cap)."""

    ratio: float = 0.5
    use_rand: bool = True  # False: the top-left token of every cell is its destination
    merge_attn: bool = True
    merge_crossattn: bool = False
    merge_mlp: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        super().__post_init__()
        sx, sy = self.stride
        check_range(self.name, "ratio", self.ratio, 0.0, self.cap,
                    hint=f" (the cap 1 - 1/(sx*sy) = {self.cap:g} for stride ({sx}, {sy}): each cell keeps one token)")
        check_range(self.name, "seed", self.seed, 0, hint=" (noise seed)")

    @property
    def targets(self) -> frozenset[str]:
        flags = {"attn1": self.merge_attn, "attn2": self.merge_crossattn, "ff": self.merge_mlp}
        return frozenset(k for k, on in flags.items() if on)

    def merges(self, n: int) -> int:
        return int(n * self.ratio)

    def threshold_value(self) -> float | None:
        return None

    def choose(self, grid, keys, stream):
        if not self.use_rand:
            return torch.zeros(1, *self.cells(grid), dtype=torch.long, device=keys.device)
        return super().choose(grid, keys, stream)

    def tokens(self, n, grid, dim, index, depth):
        """Merged sub-modules see ``n - r`` tokens; matching is every source against every destination
        (cosine similarities of the block input: ``n_src * n_dst * dim``). For ``tomesd-threshold`` this is the
        fewest tokens (every proposal passing the threshold): its real cost is data-dependent, at least this."""
        hsy, wsx = self.cells(grid)
        r = min(self.merges(n), n - hsy * wsx)
        if r <= 0 or not self.targets:
            return BlockTokens.full(n)
        t = self.targets
        m = n - r
        n_dst = hsy * wsx
        return BlockTokens(m if "attn1" in t else n, m if "attn1" in t else n, m if "attn2" in t else n,
                           m if "ff" in t else n, (n - n_dst) * n_dst * dim)

    def plan(self, metric, grid, keys, stream):
        n = metric.shape[1]
        hsy, wsx = self.cells(grid)
        r = min(self.merges(n), n - hsy * wsx)  # never binds when ratio <= cap; kept for safety
        if r <= 0 or not self.targets:
            return None
        threshold = self.threshold_value()
        dst, kept = bipartite_merge_2d(metric, grid, self.stride, r, self.choose(grid, keys, stream), threshold)
        if threshold is None:  # every row merges exactly r tokens
            return MergePlan(dst, n - r, self.targets)
        if bool((kept == n).all()):
            return None  # nothing passed the threshold in any row
        return MergePlan(dst, kept, self.targets)
