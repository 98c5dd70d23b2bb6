"""PruneVid: Huang et al., "PruneVid: Visual Token Pruning for Efficient Video Large Language Models", ACL
Findings 2025 (arXiv 2412.16117).

Before the LLM: frames are clustered by their mean tokens with DPC-kNN into ``segments`` scenes (runs of
consecutive frames of one cluster are segments); inside a segment, places whose token stays similar
(consecutive cosine >= ``threshold``) are static and merge over time into one token at the segment's first
frame; then each frame's remaining tokens are clustered by density peaks and merged into the centres.

Inside the LLM (``kv_keep`` < 1), PruneVid's question-guided KV pruning: the question (the real tokens after
the video) rates every video token by the largest attention any question token pays it in decoder layer
``kv_layer - 1``, over heads and question tokens (the default ``kv_layer`` = 11 rates in layer 10, the
paper's setting); the best ``kv_keep`` share (the paper's alpha, 0.4 in its scripts) stays, in the later
layers' computation and in *every* layer's KV cache (the earlier layers' stored entries are dropped too), so
decoding reads only them. Simplification: the share is taken over the whole video, where the authors
apportion it to static and per-frame dynamic tokens.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ....registry import check_range
from ...methods.base import register
from ..base import VideoMethod
from ..llm import PrefillStage
from ..ops import density_peaks, segment_then_merge, spatial_merge_macs


def scene_segments(x: torch.Tensor, segments: int, knn: int) -> list[tuple[int, int]]:
    """Runs of consecutive frames whose mean tokens fall in the same of ``segments`` DPC-kNN clusters."""
    t = x.shape[0]
    _centres, label = density_peaks(x.float().mean(1), min(segments, t), knn)
    change = (label[1:] != label[:-1]).nonzero().squeeze(1).add(1).tolist()
    edges = [0, *change, t]
    return list(zip(edges[:-1], edges[1:]))


@register
@dataclass(frozen=True)
class PruneVid(VideoMethod):
    """Scene segments, static tokens merged over time, then per-frame density-peak merging (PruneVid, Huang et al.,
    arXiv 2412.16117); with ``kv_keep`` < 1, question-guided pruning of the video's KV entries inside the LLM."""

    threshold: float = 0.8
    segments: int = 4
    knn: int = 5
    kv_keep: float = 1.0
    kv_layer: int = 11
    name: ClassVar[str] = "prunevid"
    merges: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "threshold", self.threshold, -1.0, 1.0, hint=" (cosine of a place's consecutive tokens)")
        check_range(self.name, "segments", self.segments, 1, hint=" (frame clusters)")
        check_range(self.name, "knn", self.knn, 1, hint=" (neighbours for the density)")
        check_range(self.name, "kv_keep", self.kv_keep, 0.0, 1.0, low_open=True,
                    hint=" (share of the video tokens the question keeps in the KV cache; 1 = off)")
        check_range(self.name, "kv_layer", self.kv_layer, 1, hint=" (first decoder layer after the question's rating)")

    def llm_stage(self) -> PrefillStage | None:
        return None if self.kv_keep >= 1.0 else PrefillStage(self.kv_layer, self.kv_keep, "question",
                                                               prune_cache=True, param="kv_layer")

    def reduce_video(self, u):
        return segment_then_merge(u.emb, u.frames, u.grid[0] * u.grid[1], u.k, self.threshold, self.knn,
                                  lambda x, step: scene_segments(x, self.segments, self.knn))

    def video_macs(self, frames, grid, k, hidden, query):
        p = grid[0] * grid[1]
        return frames * frames * hidden + max(0, frames - 1) * p * hidden + spatial_merge_macs(frames, p, k, hidden)
