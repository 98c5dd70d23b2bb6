"""FastVID: Shen et al., "FastVID: Dynamic Density Pruning for Fast Video Large Language Models", arXiv
2503.11187.

1. Dynamic segmentation (DySeg): cut the video before every frame whose mean token has cosine below
   ``threshold`` with the previous frame's, and at the ``segments - 1`` least similar transitions.
2. Density-based spatio-temporal pruning per segment, with the segment's share of the budget (proportional
   to its frames): a ``salient`` part is kept as is -- FastVID ranks these by [CLS] attention, which
   Qwen2-VL's tower lacks, so here they are the tokens farthest from the segment's mean (the distinctive
   ones) -- and the rest are density peaks (DPC-kNN) of the segment's anchor frames (every ``stride``-th
   frame), into which every other token of the segment is merged by cosine similarity. A merged token sits
   at its peak's (t, h, w) position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ....registry import check_range
from ...methods.base import register
from ...reduce import merge_into_targets, top_k
from ..base import VideoMethod
from ..ops import apportion, density_peaks, frame_similarity, segments_from_cuts, unit


def dyseg(x: torch.Tensor, threshold: float, segments: int) -> list[tuple[int, int]]:
    """FastVID's dynamic segmentation of frames ``x`` (T, P, C): low-similarity cuts plus the lowest ones."""
    t = x.shape[0]
    if t < 2:
        return [(0, t)]
    sim = frame_similarity(x)
    cuts = set((sim < threshold).nonzero().squeeze(1).add(1).tolist())
    cuts |= set(torch.sort(sim, stable=True).indices[: max(0, segments - 1)].add(1).tolist())
    return segments_from_cuts(t, sorted(cuts))


@register
@dataclass(frozen=True)
class FastVID(VideoMethod):
    """DySeg segments, then per segment distinctive tokens kept and density peaks merging the rest (FastVID)."""

    threshold: float = 0.9
    segments: int = 8
    salient: float = 0.4
    stride: int = 4
    knn: int = 5
    name: ClassVar[str] = "fastvid"
    merges: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "threshold", self.threshold, -1.0, 1.0, hint=" (cosine of consecutive frames)")
        check_range(self.name, "segments", self.segments, 1, hint=" (at least this many segments, if frames allow)")
        check_range(self.name, "salient", self.salient, 0.0, 1.0, hint=" (share of a segment's budget kept as is)")
        check_range(self.name, "stride", self.stride, 1, hint=" (anchor frame every stride frames)")
        check_range(self.name, "knn", self.knn, 1, hint=" (neighbours for the density)")

    def reduce_video(self, u):
        t, p = u.frames, u.grid[0] * u.grid[1]
        x = u.emb.view(t, p, -1)
        segs = dyseg(x, self.threshold, self.segments)
        sizes = torch.tensor([(e - s) * p for s, e in segs], device=u.emb.device)
        quota = apportion(sizes, u.k, sizes)
        idx, emb = [], []
        for (s, e), k in zip(segs, quota.tolist()):
            if k == 0:
                continue
            i, out = self._segment(u.emb[s * p : e * p], e - s, p, k)
            idx.append(i + s * p)
            emb.append(out)
        return torch.cat(idx), torch.cat(emb)

    def _segment(self, x: torch.Tensor, frames: int, p: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        if k >= n:
            return torch.arange(n, device=x.device), x
        n_sal = int(self.salient * k)
        cand = _anchors(frames, p, self.stride, k - n_sal, x.device)
        peaks, _ = density_peaks(x[cand], k - n_sal, self.knn)
        peaks = cand[peaks]
        distinct = -(unit(x) @ unit(x.float().mean(0, keepdim=True)).T).squeeze(1)
        distinct[peaks] = -torch.inf
        sal = top_k(distinct, n_sal)
        return merge_into_targets(x, x, sal, peaks)

    def video_macs(self, frames, grid, k, hidden, query):
        """Frame-mean cosines, then per segment (counted as ``segments`` near-equal ones; exact when every
        frame is cut): distinctiveness, the anchors' density matrix and the merge's similarities."""
        p = grid[0] * grid[1]
        total = max(0, frames - 1) * hidden
        segs = min(frames, self.segments)
        f_seg = [frames // segs + (1 if i < frames % segs else 0) for i in range(segs)]
        sizes = torch.tensor(f_seg) * p
        for f, kk in zip(f_seg, apportion(sizes, k, sizes).tolist()):
            if kk == 0 or kk >= f * p:
                continue
            n_sal = int(self.salient * kk)
            cand = len(_anchors(f, p, self.stride, kk - n_sal, None))
            total += cand * cand * hidden + f * p * hidden + (f * p - kk) * (kk - n_sal) * hidden
        return total


def _anchors(frames: int, p: int, stride: int, need: int, device) -> torch.Tensor:
    """Tokens of every ``stride``-th frame of a segment (all its tokens when they are fewer than ``need``)."""
    n = frames * p
    anchor = (torch.arange(n, device=device) // p) % stride == 0
    return anchor.nonzero().squeeze(1) if int(anchor.sum()) >= need else torch.arange(n, device=device)
