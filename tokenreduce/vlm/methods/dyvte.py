"""Dynamic visual-token exit, after DyVTE: Wu et al., "Accelerating Multimodal Large Language Models via Dynamic
Visual-Token Exit and the Empirical Findings", arXiv 2411.19628. Once the text stops looking at the image, every
visual token leaves the LLM; training-free here: the exit layer is chosen from attention, not a learned head."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...registry import check_range
from ..flops import scoring_macs
from .base import InsideMethod, Mask, Stage, register


@register
@dataclass(frozen=True)
class DyVTE(InsideMethod):
    """Dynamic visual-token exit (after DyVTE, Wu et al., arXiv 2411.19628; the paper learns the exit decision
    with small hyper-networks, this is its training-free form). From decoder layer ``first`` on, before each
    layer the last token's attention (heads averaged) in the previous layer is rebuilt; when its mass on the
    visual tokens falls below ``threshold`` every visual token is dropped for the remaining layers.

    The budget sets the latest exit: all visual tokens stay for ``ceil(depth * budget / n)`` layers (at least
    ``first``), so the visual tokens per layer average at most the budget; an earlier exit only saves more. The
    cost model counts that latest exit (an upper bound). ``keep=1.0`` never exits. In a batch, a row that exits
    while others stay has its visual tokens masked out of every later query instead (the batch stays
    rectangular and a row's result equals its own; its savings wait until every row has exited).
    """

    threshold: float = 0.1
    first: int = 1
    name: ClassVar[str] = "dyvte"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "threshold", self.threshold, 0.0, 1.0, hint=" (last token's attention on the image)")
        check_range(self.name, "first", self.first, 1, hint=" (earliest layer the visual tokens may exit before)")

    def latest(self, n: int, depth: int) -> int | None:
        """The layer all visual tokens have left by (None: the budget keeps them all)."""
        k = self.budget(n)
        if k >= n:
            return None
        return min(depth - 1, max(self.first, math.ceil(depth * k / n)))

    def stages(self, depth):
        return tuple(range(self.first, depth))

    def check(self, depth):
        if self.first >= depth:
            raise ValueError(
                f"{self.name}: first must be in [1, {depth - 1}] for a {depth}-layer LLM, got {self.first}"
            )

    def counts(self, n, depth):
        last = self.latest(n, depth)
        return tuple(n if last is None or s < last else 0 for s in self.stages(depth))

    def keep_mask(self, st: Stage) -> Tensor | Mask | None:
        live = st.present > 0
        if not bool(live.any()) or all(self.budget(int(p)) >= int(p) for p in st.present[live]):
            return None  # gone already, or the budget keeps every token (never exits)
        if bool((st.quota == 0).any()):
            return st.group < 0  # the latest exit: every row's visual tokens leave
        gone = torch.zeros(st.vis.shape[0], dtype=torch.bool, device=st.vis.device)
        if st.masked is not None:
            gone |= (st.masked & st.vis).any(1)  # rows that left at an earlier layer
        attn = self.scores(st.attn, st.x, st.cos, st.sin, st.vis, st.valid)
        gone |= (attn * st.vis).sum(1) < self.threshold
        if not bool(gone.any()):
            return None
        if bool(gone.all()):
            return st.group < 0
        return Mask(st.vis & gone[:, None])  # rows that left while others stay: masked until all have left

    def extra_macs(self, shape, counts, images, text_after, vision_width):
        n_vis = sum(h * w for h, w in images)
        last = self.latest(n_vis, shape.layers) if n_vis else None
        if last is None:
            return 0
        return sum(scoring_macs(shape, counts[s - 1], 1) for s in self.stages(shape.layers) if s < last)
