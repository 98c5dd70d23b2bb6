"""Zero-TPrune: importance by weighted PageRank on the attention graph, then similarity pruning.

Wang, Dedhia and Jha, "Zero-TPrune: Zero-Shot Token Pruning through Leveraging of the Attention
Graph in Pre-Trained Transformers", CVPR 2024 (arXiv:2305.17328).

I-stage: the attention matrix of each head is a graph (queries distribute their importance over
the keys they attend to); ``iters`` steps of weighted PageRank from the uniform distribution give
each token's importance, averaged over heads. S-stage: the remaining tokens are split by importance
into a less and a more important half; the less important tokens most similar (cosine of
head-averaged keys) to some more important token are pruned as duplicates. Of a layer's budget
``r``, ``round(similarity_share · r)`` go by the S-stage (at most what the halves allow) and the
rest, the least important tokens, by the I-stage. Simplifications: heads are averaged uniformly
(no head filtering / informative-region emphasis) and the S-stage uses a fixed importance split.

This method is inherently quadratic: it needs every row of the attention matrix of every head
(the paper's PageRank runs per head, so averaging the heads' graphs first would change its results).
A reducing layer of a Hugging Face family with the eager or SDPA backend computes its attention
explicitly a few heads at a time (:func:`tokenreduce.core.scoring.attention_stats_blockwise`): each
head's N×N graph gives the block's output and its ``iters`` PageRank products while it is in cache,
and is freed, so no (B, H, N, N) tensor is held and no second Q·Kᵀ is computed. Other backends and
families recompute the graph next to their kernel (H·N²·d more MACs, not in the cost below). Its cost
counts the PageRank products and the similarity.

Default ``min_step=0.1`` (changed from 0 in issue 21, so results at the defaults changed): each reducing
layer removes at least 10 % of the row, smaller steps are taken early (same final count; at keep 0.7
over 6 layers, 3 reducing layers instead of 6). The ``iters`` PageRank products cost about one softmax
per layer whatever the step, which removing 5 % of the tokens does not repay (all-MiniLM-L6-v2, NQ,
batch 32: 0.94x at 5 % steps); ``min_step=0`` restores one step per layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...core.assign import compact
from ...core.dims import ModelDims
from ...core.matching import prune_duplicates, rank_of
from ...core.scoring import cosine_matrix, weighted_pagerank, weighted_pagerank_blockwise
from .base import LayerTensors, Method, Plan, register


@register("zero-tprune")
@dataclass(frozen=True)
class ZeroTPrune(Method):
    """Prune by attention-graph PageRank importance, then prune unimportant near-duplicates."""

    # default 0.1, not 0: a reducing layer pays a fixed, quadratic scoring cost (explicit attention in
    # place of the fused kernel, plus the statistic) that removing 5 % of a row does not repay (see the
    # module docstring); smaller steps are taken early instead, same final count
    min_step: float = 0.1
    iters: int = 10
    similarity_share: float = 0.5

    needs: ClassVar[frozenset[str]] = frozenset({"attn_stat", "keys"})
    cap: ClassVar[float] = 0.9
    drops: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.iters, bool) or not isinstance(self.iters, int) or self.iters < 1:
            raise ValueError(f"zero-tprune: iters must be a positive int, got {self.iters!r}")
        if not 0.0 <= float(self.similarity_share) <= 1.0:
            raise ValueError(f"zero-tprune: similarity_share must be in [0, 1], got {self.similarity_share}")

    def attention_stat(self) -> Callable[[Tensor, Tensor], Tensor]:
        return functools.partial(weighted_pagerank, iters=self.iters)

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        p = t.protected
        valid = t.sizes > 0
        if t.attn_stat is not None:  # what the runner passes
            ranks = t.attn_stat
        elif t.attn is not None:  # given explicitly (tests, custom runners)
            ranks = weighted_pagerank(t.attn, valid, self.iters)
        else:
            ranks = weighted_pagerank_blockwise(t.queries, t.keys_heads, t.scaling, valid, self.iters, t.key_bias)
        importance = ranks.mean(1)[:, p:]
        cand = valid[:, p:]
        u = cand.sum(1)
        r = torch.minimum(n_remove, u)
        r_sim = torch.minimum(torch.round(r.double() * float(self.similarity_share)).long(), u - r)
        r_imp = r - r_sim
        first = cand & (rank_of(torch.where(cand, importance, float("inf")), descending=False) < r_imp[:, None])
        rest = cand & ~first
        sim = cosine_matrix(t.keys[:, p:], t.keys[:, p:])
        second = prune_duplicates(sim, importance, rest, r_sim)
        keep = torch.cat([valid[:, :p], rest & ~second], 1)
        dst, n_out = compact(keep, valid)
        return Plan(dst, n_out, one_to_one=True)

    def cost_macs(self, n: int, dims: ModelDims, protected: int) -> int:
        pagerank = self.iters * dims.heads * n * n  # one matrix-vector product per head and step
        return pagerank + (n - protected) ** 2 * dims.head_dim
