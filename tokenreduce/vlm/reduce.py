"""Pure tensor functions that shrink one image's visual tokens: select, merge into targets, bipartite merge, pool.

Each returns ``(idx, emb)``: ``idx`` (k,) the ascending local indices of the tokens that stand for the
image after reduction (a merged token takes the index, hence the position, of the token it was merged
into) and ``emb`` (k, C) their embeddings. Keeping ``idx`` ascending keeps the LLM's causal order.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.assign import apply_assignment
from ..core.merge import bipartite_soft_matching


def top_k(scores: Tensor, k: int) -> Tensor:
    """Ascending indices of the ``k`` largest ``scores`` (ties: lower index first, so results are stable)."""
    order = torch.sort(scores, descending=True, stable=True).indices[:k]
    return torch.sort(order).values


def select(emb: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    idx = top_k(scores, k)
    return idx, emb[idx]


def merge_into_targets(emb: Tensor, keys: Tensor, kept: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """Keep ``kept`` as they are; every other token is averaged into its most similar ``targets`` token.

    VisionZip's contextual tokens (Yang et al., 2024): similarity is cosine between ``keys`` rows.
    Returns the union of kept and targets, ascending.
    """
    n = emb.shape[0]
    rest = torch.ones(n, dtype=torch.bool, device=emb.device)
    rest[kept] = False
    rest[targets] = False
    src = rest.nonzero().squeeze(1)
    sums, counts = emb[targets].clone().double(), torch.ones(len(targets), dtype=torch.float64, device=emb.device)
    if len(src) and len(targets):
        kn = F.normalize(keys.double(), dim=-1)
        best = (kn[src] @ kn[targets].T).argmax(dim=1)
        sums.index_add_(0, best, emb[src].double())
        counts.index_add_(0, best, torch.ones_like(best, dtype=torch.float64))
    merged = (sums / counts[:, None]).to(emb.dtype)
    idx = torch.cat([kept, targets])
    out = torch.cat([emb[kept], merged])
    order = torch.argsort(idx)
    return idx[order], out[order]


def bipartite_merge(emb: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """ToMe-style bipartite soft matching (Bolya et al., ICLR 2023) repeated until ``k`` tokens remain.

    ``emb`` is one image (n, C) or a batch of same-size images (B, n, C), merged together by the shared
    :func:`~tokenreduce.core.merge.bipartite_soft_matching` and size-weighted
    :func:`~tokenreduce.core.assign.apply_assignment` (at least float32). Tokens alternate between sets A
    and B; the most similar A tokens merge into their best B match. Rounds remove at most half the tokens
    each; a merged token stands at its B target's index.
    """
    single = emb.ndim == 2
    idx, out, _size = bipartite_merge_sized(emb[None] if single else emb, None, k)
    return (idx[0], out[0]) if single else (idx, out)


def bipartite_merge_sized(x: Tensor, size: Tensor | None, k: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`bipartite_merge` of a batch (B, n, C) whose tokens already stand for ``size`` (B, n) tokens each
    (None: one each): returns the owners' indices (B, k), the size-weighted means and their sizes."""
    b, n, _ = x.shape
    idx = torch.arange(n, device=x.device).expand(b, n)
    work = x.to(torch.promote_types(x.dtype, torch.float32))
    size = work.new_ones(b, n) if size is None else size.to(work.dtype)
    valid = torch.ones(b, n, dtype=torch.bool, device=x.device)
    while work.shape[1] > k:
        cur = work.shape[1]
        r = min(cur - k, cur // 2)
        dst, n_out = bipartite_soft_matching(
            work, torch.full((b,), r, device=x.device), valid[:, :cur], protected=0, n_out=cur - r
        )
        work, size = apply_assignment(work, size, dst, n_out)
        idx = _slot_owners(idx, dst, n_out)
    out = x if work.shape[1] == n else work.to(x.dtype)
    return idx, out, size


def _slot_owners(idx: Tensor, dst: Tensor, n_out: int) -> Tensor:
    """Original index of the token each slot stands for after a bipartite round: the B token where A tokens
    merged into it, else the A token that kept its own slot (B tokens, at odd positions, are written last)."""
    own = idx.new_empty(idx.shape[0], n_out)
    own.scatter_(1, dst[:, 0::2], idx[:, 0::2])
    return own.scatter_(1, dst[:, 1::2], idx[:, 1::2])


def pool_shape(h: int, w: int, k: int) -> tuple[int, int]:
    """Output grid (a, b) with a * b <= k, a <= h, b <= w, closest to k and then to the image's aspect."""
    best = (1, 1)
    for a in range(1, h + 1):
        b = min(w, k // a)
        if b < 1:
            break
        better = a * b > best[0] * best[1] or (
            a * b == best[0] * best[1] and abs(math.log(a * w / (b * h))) < abs(math.log(best[0] * w / (best[1] * h)))
        )
        if better:
            best = (a, b)
    return best


def pool(emb: Tensor, grid: tuple[int, int], k: int) -> tuple[Tensor, Tensor]:
    """Average-pool the (h, w) token grid to about ``k`` cells; each cell sits at its centre token's index."""
    h, w = grid
    a, b = pool_shape(h, w, k)
    x = emb.T.reshape(1, -1, h, w)
    out = F.adaptive_avg_pool2d(x, (a, b)).reshape(-1, a * b).T
    rows = [((i * h) // a + (-((-(i + 1) * h) // a)) - 1) // 2 for i in range(a)]
    cols = [((j * w) // b + (-((-(j + 1) * w) // b)) - 1) // 2 for j in range(b)]
    idx = torch.tensor([r * w + c for r in rows for c in cols], device=emb.device)
    return idx, out.contiguous()


def keep_top_in_groups(group: Tensor, scores: Tensor, quota: Tensor) -> Tensor:
    """(B, N) keep mask: tokens of group -1 stay; of group g, the ``quota[g]`` best-scored stay (ties: lower
    index first). Batched: one sort by score, one stable sort by group, rank within group by searchsorted."""
    n = group.shape[1]
    by_score = torch.sort(scores.float(), dim=1, descending=True, stable=True).indices
    by_group = torch.sort(group.gather(1, by_score), dim=1, stable=True).indices
    order = by_score.gather(1, by_group)  # group-major, best first within a group
    g = group.gather(1, order)
    rank = torch.arange(n, device=group.device) - torch.searchsorted(g.contiguous(), g.contiguous())
    keep_sorted = (g < 0) | (rank < quota[g.clamp(min=0)])
    return torch.zeros_like(keep_sorted).scatter_(1, order, keep_sorted)
