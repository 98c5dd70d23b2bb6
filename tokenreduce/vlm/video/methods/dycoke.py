"""DyCoke's temporal token merging (TTM): Tao et al., "DyCoke: Dynamic Compression of Tokens for Fast Video
Large Language Models", CVPR 2025 (arXiv 2411.15024).

Frames are taken in windows of ``window``; the first frame of a window is its anchor and every other frame is
compared, place by place, with the frame before it. A token that nearly repeats the token at its place in
the previous frame is temporally redundant and is dropped (the earlier token stands for it). Here the
ranking is global, so the budget is exact: non-anchor tokens go first, most redundant first; only a budget
below the anchors' tokens touches anchors (ranked by similarity to the previous window's anchor), and the
very first frame goes last.

DyCoke's second stage, dynamic pruning of the visual KV cache while decoding (``kv_keep`` < 1): at every
decoding step the current token's attention in layer ``kv_layer - 1`` (heads averaged) picks the ``kv_keep``
share of the video's cached entries that layers ``kv_layer..`` read in this step (gathered with the text and
the new tokens, as the authors' code does); the others stay stored, so a later step can bring them back. As in
the authors' code, the choice is made again only when the cosine between this step's and the previous step's
attention over the video entries falls below ``kv_refresh`` (the first step always chooses). The prefill is not
pruned; the stage saves decode attention reads, not memory (see :mod:`..llm`). TTM also composes with any KV
press through the shared provenance map (``apply_press`` next to ``tokenreduce.patch``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ....registry import check_range
from ...methods.base import register
from ...reduce import top_k
from ..base import VideoMethod
from ..llm import DecodeStage
from ..ops import aligned_similarity


@register
@dataclass(frozen=True)
class DyCoke(VideoMethod):
    """Drop tokens that repeat the same place of the previous frame (DyCoke TTM, Tao et al., CVPR 2025); with
    ``kv_keep`` < 1, also DyCoke's dynamic pruning of the video's KV entries at every decoding step."""

    window: int = 4
    kv_keep: float = 1.0
    kv_layer: int = 3
    kv_refresh: float = 0.9
    name: ClassVar[str] = "dycoke"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "window", self.window, 2, 64, hint=" (frames per window, anchor first)")
        check_range(self.name, "kv_keep", self.kv_keep, 0.0, 1.0, low_open=True,
                    hint=" (share of the video's KV entries each decoding step attends to; 1 = off)")
        check_range(self.name, "kv_layer", self.kv_layer, 1, hint=" (first layer pruned while decoding)")
        check_range(self.name, "kv_refresh", self.kv_refresh, -1.0, 1.0,
                    hint=" (cosine of consecutive steps' attention below which the entries are chosen again)")

    def decode_stage(self) -> DecodeStage | None:
        return None if self.kv_keep >= 1.0 else DecodeStage(self.kv_layer, self.kv_keep, self.kv_refresh)

    def redundancy(self, x: torch.Tensor) -> torch.Tensor:
        """(T, P) drop priority: similarity to the previous frame's token at the same place; anchors -2 lower,
        the first frame -4 (always last)."""
        t, p, _ = x.shape
        score = torch.full((t, p), -4.0, device=x.device)
        if t < 2:
            return score
        score[1:] = aligned_similarity(x[1:], x[:-1])
        anchors = torch.arange(t, device=x.device) % self.window == 0
        if t > self.window:  # anchors compare with the previous window's anchor instead
            a = torch.arange(self.window, t, self.window, device=x.device)
            score[a] = aligned_similarity(x[a], x[a - self.window])
        score[anchors] -= 2.0
        score[0] = -4.0
        return score

    def reduce_video(self, unit):
        t, p = unit.frames, unit.grid[0] * unit.grid[1]
        drop = self.redundancy(unit.emb.view(t, p, -1)).reshape(-1)
        idx = top_k(-drop, unit.k)
        return idx, unit.emb[idx]

    def video_macs(self, frames, grid, k, hidden, query):
        """Aligned cosines: every frame with the one before, and anchors with the previous window's anchor."""
        pairs = max(0, frames - 1) + (len(range(self.window, frames, self.window)) if frames > self.window else 0)
        return pairs * grid[0] * grid[1] * hidden
