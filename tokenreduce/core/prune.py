"""Top-k pruning by a per-token score, with optional fusion of the pruned tokens (EViT).

Liang et al., "Not All Patches are What You Need: Expediting Vision Transformers via Token
Reorganizations" (EViT), ICLR 2022: keep the tokens the [CLS] token attends to most and fuse the
rest into one token weighted by that attention. Pure functions producing a token assignment.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .assign import compact, stable_order


def topk_assignment(
    scores: Tensor, n_drop: Tensor, valid: Tensor, protected: int = 1, fuse: bool = False, n_out: int | None = None
) -> tuple[Tensor, int, Tensor]:
    """Drop the ``n_drop[b]`` lowest-scoring real unprotected tokens of each row.

    Returns ``(dst, n_out, fused)``: ``fused`` marks tokens that go into the fused token (all
    dropped tokens when ``fuse``; the fused token takes the slot of the first of them, so no row
    ever needs more slots than it had). Ties are broken by position (earlier kept first).
    ``n_out``: the known output length (static shapes; see :func:`compact`).
    """
    b, n = scores.shape
    pos = torch.arange(n, device=scores.device)
    cand = valid & (pos >= protected)
    n_cand = cand.sum(1)
    n_drop = torch.minimum(n_drop.to(n_cand.dtype), n_cand)
    if fuse:  # the fused token uses one slot: dropping one token into it would save nothing
        n_drop = torch.where(n_drop == 1, 0, n_drop)
    key = torch.where(cand, scores.float(), float("inf"))
    order = stable_order(key, descending=False)  # ascending: worst first
    rank = torch.empty_like(order).scatter_(1, order, pos.expand(b, -1))
    dropped = cand & (rank < n_drop[:, None])
    if not fuse:
        slot, n_out = compact(valid & ~dropped, valid, n_out)
        return slot, n_out, torch.zeros_like(dropped)
    first = dropped & (torch.cumsum(dropped, 1) == 1)
    slot, n_out = compact((valid & ~dropped) | first, valid, n_out)
    anchor = (slot * first).sum(1, keepdim=True)
    slot = torch.where(dropped, anchor.expand(-1, n), slot)
    return slot, n_out, dropped

