"""MustDrop: Liu et al., "Multi-Stage Vision Token Dropping: Towards Efficient Multimodal Large Language Model",
arXiv 2411.10803. Visual tokens are dropped at several stages: spatially redundant neighbours merged during vision
encoding, then dual-attention filtering in the prefill (a third, decode-time cache policy is not implemented)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...kv.scoring import window_attention, window_keys, window_queries
from ...registry import check_range
from ..flops import scoring_macs
from ..reduce import keep_top_in_groups
from .base import BeforeMethod, InsideMethod, Stage, register


def window_similarity(emb: Tensor, grid: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Every full 2x2 window of an (h, w) token grid: its mean pairwise cosine (W,) and its 4 token indices
    (W, 4), row-major (the last is the window's bottom-right token)."""
    h, w = grid
    r = torch.arange(0, h - h % 2, 2, device=emb.device)
    c = torch.arange(0, w - w % 2, 2, device=emb.device)
    top = (r[:, None] * w + c[None, :]).reshape(-1)
    idx = torch.stack([top, top + 1, top + w, top + w + 1], dim=1)
    x = emb[idx].to(torch.promote_types(emb.dtype, torch.float32))
    x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    sim = x @ x.transpose(1, 2)  # (W, 4, 4)
    return (sim.sum((1, 2)) - 4.0) / 12.0, idx


@dataclass(frozen=True)
class SpatialMerge(BeforeMethod):
    """MustDrop's vision-stage merge, bound to MustDrop's budget (not registered: its first stage). The most
    self-similar 2x2 windows each become their mean, at the window's last token, until ``spatial`` of the cut
    to the budget is done; other tokens pass unchanged."""

    spatial: float = 0.5
    name: ClassVar[str] = "mustdrop-spatial"

    def merges(self, n: int) -> int:
        """Windows merged in an image of ``n`` tokens (each removes 3)."""
        return min(round(self.spatial * (n - super().budget(n))) // 3, n // 4)

    def budget(self, n):
        return n - 3 * self.merges(n)

    def kept(self, grid):
        return grid[0] * grid[1] - 3 * min(self.merges(grid[0] * grid[1]), (grid[0] // 2) * (grid[1] // 2))

    def reduce(self, emb, grid, cls, k):
        n = emb.shape[0]
        if grid[0] * grid[1] != n:
            return torch.arange(n, device=emb.device), emb
        score, idx = window_similarity(emb, grid)
        chosen = idx[torch.sort(score, descending=True, stable=True).indices[: min((n - k) // 3, len(score))]]
        keep = torch.ones(n, dtype=torch.bool, device=emb.device)
        keep[chosen[:, :3].reshape(-1)] = False
        out = emb.clone()
        out[chosen[:, 3]] = emb[chosen].to(torch.promote_types(emb.dtype, torch.float32)).mean(1).to(emb.dtype)
        kept = keep.nonzero().squeeze(1)
        return kept, out[kept]

    def image_macs(self, n, k, hidden, vision_width):
        return 16 * (n // 4) * hidden if k < n else 0  # 4 x 4 similarities per window


@register
@dataclass(frozen=True)
class MustDrop(InsideMethod):
    """MustDrop (Liu et al., arXiv 2411.10803), the two stages our adapters support:

    1. vision encoding: merge spatially redundant 2x2 windows (most similar first; the paper merges those
       above a similarity threshold, here a count, so batch rows stay aligned) until ``spatial`` of the total
       reduction is done. Applied to the projected tokens entering the LLM (the paper merges inside the tower).
    2. prefill, before decoder layer ``layer``: dual-attention filtering. The text after the image rates each
       visual token by its summed attention (global) and its largest single attention (individual); a token
       stays if it ranks high in either (best of its two ranks), down to the budget.

    The decode-stage output-aware cache policy is not implemented (compose a KV press for that).
    """

    layer: int = 2
    spatial: float = 0.5
    name: ClassVar[str] = "mustdrop"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "layer", self.layer, 1, hint=" (decoder layer the filtering happens before)")
        check_range(self.name, "spatial", self.spatial, 0.0, 1.0, hint=" (share of the reduction done by merging)")

    @property
    def before_llm(self) -> SpatialMerge:
        return SpatialMerge(keep=self.keep, tokens=self.tokens, spatial=self.spatial)

    def stages(self, depth):
        return (self.layer,)

    def rating_queries(self, text_after):
        return text_after

    def keep_mask(self, st: Stage) -> Tensor | None:
        if bool((st.present <= st.quota).all()):
            return None
        b, n = st.vis.shape
        pos = torch.arange(n, device=st.vis.device)
        last_vis = torch.where(st.vis, pos, -1).max(1).values
        w = max(1, int((n - 1 - last_vis).max()))
        keys = window_keys(st.attn, st.x, st.cos, st.sin)
        q = window_queries(st.attn, st.x[:, -w:], st.cos[:, -w:], st.sin[:, -w:])
        a = window_attention(q, keys, st.attn.scaling, st.valid).mean(1)  # (B, w, N)
        rater = pos[-w:][None] > last_vis[:, None]
        if st.valid is not None:
            rater &= st.valid[:, -w:]
        rater[:, -1] |= ~rater.any(1)
        a = a * rater[..., None]
        best = torch.minimum(_rank(a.sum(1)), _rank(a.amax(1)))  # 0 = best in either view
        return keep_top_in_groups(st.group, -best.float(), st.quota)

    def token_counts(self, n, images, depth):
        n_vis = sum(h * w for h, w in images)
        vis = sum(self.before_llm.kept(g) for g in images)
        after = min(vis, self.budget(n_vis)) if n_vis else 0  # the row's budget, as for every inside method
        return [n - n_vis + (vis if i < self.layer else after) for i in range(depth)]

    def extra_macs(self, shape, counts, images, text_after, vision_width):
        first = self.before_llm
        merge = sum(first.image_macs(h * w, first.budget(h * w), shape.hidden, vision_width) for h, w in images)
        st = self.layer
        if st >= len(counts) or counts[st] >= counts[st - 1]:
            return merge
        return merge + scoring_macs(shape, counts[st - 1], max(1, text_after))


def _rank(x: Tensor) -> Tensor:
    """Each entry's place (0 = largest) in its row, ties by position."""
    order = torch.sort(x.float(), dim=1, descending=True, stable=True).indices
    pos = torch.arange(x.shape[1], device=x.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, pos)
