"""ChunkKV: select whole chunks of consecutive tokens instead of single entries.

X. Liu, Z. Tang, P. Dong, Z. Li, Y. Liu, B. Li, X. Hu, X. Chu, "ChunkKV: Semantic-Preserving KV Cache
Compression for Efficient Long-Context LLM Inference", arXiv:2502.00299 (2025).

Any plain scoring press (``scorer``, SnapKV's by default) scores the entries; a chunk of ``chunk``
consecutive real tokens scores the mean over its tokens of their scores summed over the KV heads (as
kvpress's ``ChunkKVPress``), and every token gets its chunk's score, so the budget goes to whole chunks,
best first, the same chunks in every head. Chunks are counted from each row's first real token (padding
never shifts them, so a row keeps the same chunks alone or in a batch). Difference from kvpress: the
budget stays ``ceil(keep * n)`` entries, so the last chunk taken may be cut (its first tokens kept), where
kvpress keeps ``int(chunks * keep)`` whole chunks. Entries the scorer ranks above everything (a window
scored +inf) stay protected; they count as the row's best finite score in their chunk's mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...registry import check_range
from ..select import real_rank
from .base import LayerView, ScoringPress, Shape, register
from .common import compose_scorer


def chunk_scores(scores: Tensor, valid: Tensor, chunk: int) -> Tensor:
    """Each real entry's chunk score (B, N): mean over the chunk's real entries of ``scores`` (B, Hkv, N)
    summed over heads; chunks are ``chunk`` consecutive real tokens from the row's first. +inf entries count
    as the row's largest finite score; padding gets -inf."""
    finite = torch.isfinite(scores) & valid[:, None, :]
    top = scores.masked_fill(~finite, float("-inf")).amax(dim=(1, 2), keepdim=True)
    s = torch.where(torch.isposinf(scores), top, scores).masked_fill(~valid[:, None, :], 0.0).sum(1)  # (B, N)
    b, n = s.shape
    ids = torch.where(valid, real_rank(valid) // chunk, n)  # padding in a bucket of its own
    total = s.new_zeros(b, n + 1).scatter_add_(1, ids, s)
    count = s.new_zeros(b, n + 1).scatter_add_(1, ids, valid.float())
    mean = total / count.clamp(min=1.0)
    return mean.gather(1, ids).masked_fill(~valid, float("-inf"))


@register("chunkkv")
@dataclass(frozen=True)
class ChunkKV(ScoringPress):
    """Whole chunks of ``chunk`` tokens ranked by ``scorer``'s mean score (summed over KV heads)."""

    scorer: ScoringPress | str = "snapkv"  # a name becomes the press object at construction
    chunk: int = 20

    query_aware = True  # with the default scorer (SnapKV's window)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "chunk", self.chunk, 1, hint=" (tokens per chunk)")
        object.__setattr__(self, "scorer", compose_scorer(self, self.scorer))

    def score(self, view: LayerView) -> Tensor:
        assert isinstance(self.scorer, ScoringPress)  # made a press in __post_init__
        inner = self.scorer.score(view).float()
        s = chunk_scores(inner, view.valid, self.chunk)[:, None, :].expand_as(inner)
        return torch.where(torch.isposinf(inner), inner, s)

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """The scorer's: chunk means are sums (elementwise)."""
        assert isinstance(self.scorer, ScoringPress)
        return self.scorer.scoring_macs(shape, n)
