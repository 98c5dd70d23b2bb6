"""HoliTom: Shao et al., "HoliTom: Holistic Token Merging for Fast Video Large Language Models", arXiv
2505.21334.

Outside the LLM, in order:

1. Global redundancy-aware temporal segmentation: dynamic programming over all frame partitions maximizes
   the tokens temporal merging can remove -- a segment of L frames saves L - 1 tokens at every place whose
   token stays similar (consecutive cosine >= ``threshold``) across it.
2. Temporal merging: in each segment such places become one token (their mean) at the segment's first
   frame (the most static first, while the budget allows).
3. Spatial merging: what is left in each frame is clustered by density peaks (DPC-kNN) and merged into the
   cluster centres, frames sharing the budget in proportion to the tokens they hold.

Inside the LLM (``llm_keep`` < 1), HoliTom's inner-LLM merging: before decoder layer ``llm_layer`` (the paper's
K = 3) the last token's attention in the layer before (heads averaged) rates the video tokens left; the best
``llm_keep`` share stays (the paper's 1 - r, r = 0.5) and every other one is merged into the kept token whose
state it is most similar to (cosine). Kept tokens keep their (t, h, w) positions. One deliberate difference:
a kept token becomes the plain mean of itself and the tokens merged into it, where the authors' code averages
pairs one after another (so later tokens weigh more).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ....registry import check_range
from ...methods.base import register
from ..base import VideoMethod
from ..llm import PrefillStage
from ..ops import segment_then_merge, spatial_merge_macs


def global_segments(step: torch.Tensor, threshold: float) -> list[tuple[int, int]]:
    """Frame partition maximizing the tokens saved by temporal merging, from consecutive cosines ``step``
    (T-1, P): segment [i, j) saves (j - i - 1) x (places similar throughout). O(T^2 P) dynamic programming."""
    t = step.shape[0] + 1
    best = [0.0] + [-1.0] * t
    cut = [0] * (t + 1)
    ok = step >= threshold
    for j in range(1, t + 1):
        run = torch.ones(step.shape[1], dtype=torch.bool, device=step.device)
        for i in range(j - 1, -1, -1):  # segment [i, j); extend to the left
            if i < j - 1:
                run = run & ok[i]
            gain = best[i] + (j - i - 1) * int(run.sum())
            if gain > best[j]:
                best[j], cut[j] = gain, i
    out, j = [], t
    while j > 0:
        out.append((cut[j], j))
        j = cut[j]
    return out[::-1]


@register
@dataclass(frozen=True)
class HoliTom(VideoMethod):
    """Global temporal segmentation, temporal then spatial merging before the LLM, and (``llm_keep`` < 1)
    attention-guided merging inside it (HoliTom, Shao et al., arXiv 2505.21334)."""

    threshold: float = 0.8
    knn: int = 5
    llm_keep: float = 1.0
    llm_layer: int = 3
    name: ClassVar[str] = "holitom"
    merges: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "threshold", self.threshold, -1.0, 1.0, hint=" (cosine of a place's consecutive tokens)")
        check_range(self.name, "knn", self.knn, 1, hint=" (neighbours for the density)")
        check_range(self.name, "llm_keep", self.llm_keep, 0.0, 1.0, low_open=True,
                    hint=" (share of the video tokens kept at llm_layer, the rest merged; 1 = off)")
        check_range(self.name, "llm_layer", self.llm_layer, 1, hint=" (layer the merging happens before)")

    def llm_stage(self) -> PrefillStage | None:
        return None if self.llm_keep >= 1.0 else PrefillStage(self.llm_layer, self.llm_keep, "last", merge=True,
                                                                 param="llm_layer")

    def reduce_video(self, u):
        return segment_then_merge(u.emb, u.frames, u.grid[0] * u.grid[1], u.k, self.threshold, self.knn,
                                  lambda x, step: global_segments(step, self.threshold))

    def video_macs(self, frames, grid, k, hidden, query):
        p = grid[0] * grid[1]
        return max(0, frames - 1) * p * hidden + spatial_merge_macs(frames, p, k, hidden)
