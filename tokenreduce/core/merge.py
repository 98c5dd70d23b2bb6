"""Bipartite soft matching (ToMe) as a pure function producing a token assignment.

Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023. Unprotected tokens are split
alternately into sets A and B; every A token proposes its most similar B token (cosine of the
metric, usually keys averaged over heads); the ``r`` best proposals are merged. At most half the
unprotected tokens can merge in one round, so B tokens are always kept.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .assign import compact, stable_order


def bipartite_soft_matching(
    metric: Tensor, r: Tensor, valid: Tensor, protected: int = 1, n_out: int | None = None
) -> tuple[Tensor, int]:
    """Plan one round of bipartite merging; returns ``(dst, n_out)`` for :func:`apply_assignment`.

    metric: (B, N, D) features compared by cosine similarity.
    r: (B,) number of merges per row, clamped to half the row's real unprotected tokens.
    valid: (B, N) real tokens (padding never merges with anything).
    protected: leading tokens ([CLS], registers) that are never merged.
    Output keeps the original order: kept tokens first, then padding. ``n_out``: the known output
    length when every row merges exactly ``r`` (static shapes; see :func:`compact`).
    """
    b, n, _ = metric.shape
    a, bb = slice(protected, None, 2), slice(protected + 1, None, 2)  # alternate split (views, no copies)
    n_unprot = valid[:, protected:].sum(1)
    r = torch.minimum(r.to(n_unprot.dtype), n_unprot // 2)
    if n - protected < 2:  # fewer than two unprotected tokens: nothing can merge
        return compact(valid, valid, n_out)

    m = metric / metric.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    scores = m[:, a] @ m[:, bb].transpose(1, 2)  # (B, |A|, |B|)
    neg = torch.finfo(scores.dtype).min
    scores = scores.masked_fill(~valid[:, bb][:, None, :], neg)
    best, best_b = scores.max(-1)  # each A token's best B partner
    best = best.masked_fill(~valid[:, a], neg)

    order = stable_order(best, descending=True)
    rank = torch.empty_like(order).scatter_(1, order, torch.arange(order.shape[1], device=metric.device).expand(b, -1))
    merged_a = rank < r[:, None]  # (B, |A|)

    keep = valid.clone()
    keep[:, a] &= ~merged_a
    slot, n_out = compact(keep, valid, n_out)
    merged_slot = slot.gather(1, protected + 1 + 2 * best_b)  # slot of each A token's partner
    slot[:, a] = torch.where(merged_a, merged_slot, slot[:, a])
    return slot, n_out
