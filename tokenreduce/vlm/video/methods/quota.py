"""Query-aware frame and token assignment, after QuoTA: Luo et al., "QuoTA: Query-oriented Token Assignment
via CoT Query Decouple for Long Video Comprehension", arXiv 2503.08689.

QuoTA rates each frame's relevance to the (decoupled) query with a lightweight LVLM and gives relevant
frames more of the token budget. Training-free and before the LLM, the rating here is the cosine between
the question's token embeddings (the text after the video) and the frame's visual tokens, both in the LLM's
input space: a frame's relevance is the mean over query tokens of its best-matching token. Budgets per
frame follow ``softmax(relevance / temperature)`` (exact, capped at a frame's size), and inside a frame the
tokens closest to the query are kept. Without text after the video, frames share the budget equally.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ....registry import check_range
from ...methods.base import register
from ...reduce import top_k
from ..base import VideoMethod
from ..ops import apportion, unit


@register
@dataclass(frozen=True)
class QuoTA(VideoMethod):
    """Frame budgets by query relevance, then the query-closest tokens per frame (after QuoTA, arXiv 2503.08689)."""

    temperature: float = 0.05
    name: ClassVar[str] = "quota"
    needs_query: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "temperature", self.temperature, 0.0, low_open=True, hint=" (softmax temperature)")

    def reduce_video(self, u):
        t, p = u.frames, u.grid[0] * u.grid[1]
        x = u.emb.view(t, p, -1)
        if u.query is None or u.query.shape[0] == 0:
            rel, tok = torch.zeros(t, device=u.emb.device), torch.zeros(t, p, device=u.emb.device)
        else:
            sim = unit(x.reshape(t * p, -1)) @ unit(u.query).T  # (T*P, Q)
            tok = sim.mean(1).view(t, p)
            rel = sim.view(t, p, -1).max(1).values.mean(1)
        caps = torch.full((t,), p, dtype=torch.long, device=u.emb.device)
        quota = apportion(torch.softmax(rel.double() / self.temperature, 0), u.k, caps)
        idx = torch.cat([top_k(tok[f], int(quota[f])) + f * p for f in range(t)])
        return idx, u.emb[idx]

    def video_macs(self, frames, grid, k, hidden, query):
        return frames * grid[0] * grid[1] * query * hidden
