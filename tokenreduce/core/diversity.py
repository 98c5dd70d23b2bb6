"""Subset selection for diversity: greedy max-min, greedy DPP MAP, pivot-based de-duplication, pairwise pruning.

Pure functions on one set of n tokens (no batch: a row's choice never depends on another row's). Each returns
the chosen indices in the order they were chosen, so the first k of a larger choice are often (max-min, DPP)
the choice for k. Computed in at least float32 (float64 inputs stay float64).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _work(x: Tensor) -> Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def cosine_self(x: Tensor) -> Tensor:
    """Cosine similarity (n, n) of the rows of ``x`` (n, D)."""
    x = _work(x)
    x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return x @ x.T


def max_min_greedy(dist: Tensor, k: int) -> Tensor:
    """Greedy max-min diversity (DivPrune, Alvar et al., CVPR 2025) on a distance matrix ``dist`` (n, n).

    The first pick is the token farthest from its nearest neighbour; each next pick maximizes its distance to
    the nearest token picked so far (ties: lower index). Returns (k,) indices in pick order.
    """
    n = dist.shape[0]
    k = min(k, n)
    if n == 1:
        return torch.zeros(k, dtype=torch.long, device=dist.device)
    eye = torch.eye(n, dtype=torch.bool, device=dist.device)
    first = int(dist.masked_fill(eye, float("inf")).min(1).values.argmax())
    picked = [first]
    nearest = dist[first].clone()
    taken = torch.zeros(n, dtype=torch.bool, device=dist.device)
    taken[first] = True
    for _ in range(k - 1):
        j = int(nearest.masked_fill(taken, float("-inf")).argmax())
        picked.append(j)
        taken[j] = True
        nearest = torch.minimum(nearest, dist[j])
    return torch.tensor(picked, dtype=torch.long, device=dist.device)


def dpp_greedy_map(kernel: Tensor, k: int, eps: float = 1e-10) -> Tensor:
    """Greedy MAP inference of a DPP with PSD ``kernel`` (n, n): each step adds the item that most increases
    log det of the chosen submatrix, with the incremental Cholesky update of Chen et al., "Fast Greedy MAP
    Inference for Determinantal Point Process to Improve Recommendation Diversity", NeurIPS 2018 (O(n k^2)).
    Once the kernel's rank is used up (no gain left), the rest follow by remaining gain, then index.
    Returns (k,) indices in pick order."""
    kernel = _work(kernel)
    n = kernel.shape[0]
    k = min(k, n)
    rows = kernel.new_zeros(k, n)  # Cholesky rows of the chosen items against every item
    gain = kernel.diagonal().clone()  # squared marginal gain of each item given the chosen ones
    taken = torch.zeros(n, dtype=torch.bool, device=kernel.device)
    picked = []
    for i in range(k):
        j = int(gain.masked_fill(taken, float("-inf")).argmax())
        picked.append(j)
        taken[j] = True
        if gain[j] > eps:
            e = (kernel[j] - rows[:i, j] @ rows[:i]) / gain[j].sqrt()
            rows[i] = e
            gain = gain - e * e
    return torch.tensor(picked, dtype=torch.long, device=kernel.device)


def pivot_spread(sim: Tensor, candidates: Tensor, shares: list[int]) -> Tensor:
    """DART's duplicate-aware pick (Wen et al., arXiv 2502.11494): for each pivot in turn, the ``shares[i]``
    candidates least similar to it (``sim`` (P, n): the pivots' cosine rows) that no earlier pivot took.
    ``candidates`` (n,) bool. Returns the picked indices in pick order."""
    free = candidates.clone()
    out = []
    for i, share in enumerate(shares):
        if share <= 0 or not bool(free.any()):
            continue
        key = sim[i].masked_fill(~free, float("inf"))
        order = torch.sort(key, stable=True).indices[: min(share, int(free.sum()))]
        free[order] = False
        out.append(order)
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.long, device=sim.device)


def prune_pairwise_duplicates(sim: Tensor, order: Tensor, keep: int, step: int = 8) -> Tensor:
    """VisPruner's diverse tokens (Zhang et al., arXiv 2412.01818): from the tokens ``order`` (their order
    defines the split), repeatedly split them alternately into A and B, and
    drop the (at most ``step``) A tokens most similar to any B token, until ``keep`` remain. The surviving A
    tokens (most similar first), then B, are the next round's order. ``sim`` (n, n) cosine."""
    cur = order
    while len(cur) > keep:
        if keep == 0:
            return cur[:0]
        a, b = cur[0::2], cur[1::2]
        r = min(step, len(cur) - keep, len(a))
        best = sim[a][:, b].max(1).values
        rank = torch.sort(best, descending=True, stable=True).indices
        cur = torch.cat([a[rank[r:]], b])
    return cur
