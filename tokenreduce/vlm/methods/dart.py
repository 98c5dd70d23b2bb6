"""DART: Wen et al., "Stop Looking for Important Tokens in Multimodal Language Models: Duplication Matters More",
arXiv 2502.11494. Inside the LLM, a few pivot tokens (largest key norms) each keep the visual tokens least
duplicated with them (lowest cosine), so the kept set covers the image instead of its most attended parts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...core.diversity import pivot_spread
from ...kv.scoring import window_keys
from ...registry import check_range
from ..flops import scoring_macs
from .base import InsideMethod, Stage, register


def shares(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as possible (earlier parts get the remainder)."""
    return [total // parts + (i < total % parts) for i in range(parts)]


def dart_select(sim: Tensor, pivots: Tensor, k: int) -> Tensor:
    """One group's kept tokens (local indices, pick order): the pivots (``pivots``, best first), then the other
    ``k - len(pivots)`` shared out over the anchors (rows of ``sim`` (A, m): cosine of each anchor -- the
    pivots, then the text pivots -- with the m tokens), each anchor taking the free tokens least similar to it.
    A budget below the pivot count keeps the first ``k`` pivots."""
    if k <= len(pivots):
        return pivots[:k]
    free = torch.ones(sim.shape[1], dtype=torch.bool, device=sim.device)
    free[pivots] = False
    return torch.cat([pivots, pivot_spread(sim, free, shares(k - len(pivots), sim.shape[0]))])


@register
@dataclass(frozen=True)
class DART(InsideMethod):
    """DART (Wen et al., arXiv 2502.11494): before decoder layer ``layer``, pick ``pivots`` visual pivots by the
    norm of their keys in the previous layer (and ``text_pivots`` from the text after the image); the rest of
    the budget is shared out over the pivots, each keeping the visual tokens least similar (cosine of this
    layer's input hidden states) to it, among those not yet kept. Image pivots are kept; text ones only guide.
    Differences from the paper's code: key norms are L2, not L1 (rotary embeddings keep L2 norms, so a row's
    pivots do not depend on its absolute positions, i.e. on its padding), pivots are visited in norm order (it
    walks a Python set), the budget is split exactly (it rounds per pivot), and hidden states are compared
    before the final norm (it applies it)."""

    layer: int = 2
    pivots: int = 4
    text_pivots: int = 4
    name: ClassVar[str] = "dart"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "layer", self.layer, 1, hint=" (decoder layer the pruning happens before)")
        check_range(self.name, "pivots", self.pivots, 1, hint=" (visual pivot tokens)")
        check_range(self.name, "text_pivots", self.text_pivots, 0, hint=" (text pivot tokens)")

    def stages(self, depth):
        return (self.layer,)

    def keep_mask(self, st: Stage) -> Tensor | None:
        if bool((st.present <= st.quota).all()):
            return None
        keys = window_keys(st.attn, st.x, st.cos, st.sin)  # (B, Hkv, N, D) of the previous layer
        norms = keys.float().square().sum((1, 3))  # (B, N): squared L2 over all heads (RoPE leaves it as is)
        h = st.hidden.float()
        h = h / h.norm(dim=-1, keepdim=True).clamp(min=1e-12)
        b, n = st.group.shape
        pos = torch.arange(n, device=h.device)
        keep = st.group < 0
        for r in range(b):
            last_vis = int(torch.where(st.vis[r], pos, -1).max())
            text = (pos > last_vis) & ~st.vis[r]
            if st.valid is not None:
                text &= st.valid[r]
            t_idx = text.nonzero().squeeze(1)
            t_idx = t_idx[torch.sort(norms[r, t_idx], descending=True, stable=True).indices[: self.text_pivots]]
            for g in st.group[r].unique().tolist():
                if g < 0:
                    continue
                members = (st.group[r] == g).nonzero().squeeze(1)
                quota = int(st.quota[g])
                if len(members) <= quota:
                    keep[r, members] = True
                    continue
                piv = torch.sort(norms[r, members], descending=True, stable=True).indices[: self.pivots]
                anchors = torch.cat([members[piv], t_idx])
                local = dart_select(h[r, anchors] @ h[r, members].T, piv, quota)
                keep[r, members[local]] = True
        return keep

    def extra_macs(self, shape, counts, images, text_after, vision_width):
        st = self.layer
        if st >= len(counts) or counts[st] >= counts[st - 1]:
            return 0
        n_vis = sum(h * w for h, w in images)
        anchors = self.pivots + min(self.text_pivots, text_after)
        return scoring_macs(shape, counts[st - 1], 0) + anchors * n_vis * shape.hidden
