"""Matching rules beyond ToMe's alternating split, each producing a token assignment.

PiToMe merges among high-energy tokens, MCTF matches in both directions, DiffRate merges the least
important tokens into the important ones, Zero-TPrune prunes the unimportant tokens that duplicate
an important one, and pooling merges fixed windows of the patch grid. All are written as
"which tokens go, and to which partner", resolved into output slots by :func:`merge_into`.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .assign import compact

NEG = float("-inf")


def merge_into(
    valid: Tensor, merged: Tensor, partner: Tensor, hops: int = 1, dropped: Tensor | None = None
) -> tuple[Tensor, int]:
    """Assignment where ``merged`` tokens join the slot of ``partner`` (B, N), ``dropped`` tokens go
    (-1) and the rest keep their own slot, in original order. A partner may itself be merged
    (chains up to ``hops`` long); it must not be dropped."""
    gone = merged if dropped is None else merged | dropped
    slot, n_out = compact(valid & ~gone, valid)
    partner = torch.where(merged, partner, torch.arange(valid.shape[1], device=valid.device)[None])
    dst = slot
    for _ in range(hops):
        dst = torch.where(merged, dst.gather(1, partner), slot)
        slot = dst
    return dst, n_out


def rank_of(key: Tensor, descending: bool) -> Tensor:
    """Position of each entry in its row's stable sort (ties by position)."""
    order = torch.sort(key, dim=1, descending=descending, stable=True).indices
    pos = torch.arange(key.shape[1], device=key.device).expand_as(order)
    return torch.empty_like(order).scatter_(1, order, pos)


def energy_merge(sim: Tensor, energy: Tensor, cand: Tensor, r: Tensor) -> tuple[Tensor, Tensor]:
    """PiToMe's matching: the ``2r`` highest-energy tokens are split alternately (by energy rank)
    into A and B; every A token merges into its most similar B token. Returns (merged, partner)."""
    rank = rank_of(energy, descending=True)
    pool = cand & (rank < 2 * r[:, None])
    is_a, is_b = pool & (rank % 2 == 0), pool & (rank % 2 == 1)
    partner = sim.masked_fill(~is_b[:, None, :], NEG).argmax(-1)
    return is_a, partner


def bidirectional_merge(w: Tensor, a_idx: Tensor, b_idx: Tensor, valid: Tensor, r: Tensor, n: int):
    """MCTF's two-way bipartite matching on a score matrix ``w`` (B, |A|, |B|) (−inf = not allowed).

    First ``r // 2`` A tokens (best edges first) merge into their best B token; then, against the
    A tokens left, ``r − r // 2`` B tokens merge into their best A token. Returns (merged, partner)
    over all ``n`` positions; ``a_idx``/``b_idx`` are the positions of the two sets.
    """
    b = w.shape[0]
    r1, r2 = r // 2, r - r // 2
    best1, to_b = w.max(-1)
    merged_a = (rank_of(best1, descending=True) < r1[:, None]) & (best1 > NEG)
    w2 = w.masked_fill(merged_a[:, :, None], NEG).transpose(1, 2)  # (B, |B|, |A|)
    best2, to_a = w2.max(-1)
    merged_b = (rank_of(best2, descending=True) < r2[:, None]) & (best2 > NEG)
    merged = torch.zeros(b, n, dtype=torch.bool, device=w.device)
    partner = torch.zeros(b, n, dtype=torch.long, device=w.device)
    merged[:, a_idx], merged[:, b_idx] = merged_a, merged_b
    partner[:, a_idx], partner[:, b_idx] = b_idx[to_b], a_idx[to_a]
    return merged & valid, partner


def merge_least_important(sim: Tensor, importance: Tensor, cand: Tensor, m: Tensor) -> tuple[Tensor, Tensor]:
    """DiffRate's merging: the ``m`` least important candidates merge into their most similar token
    among the other candidates (the important ones). ``sim`` is (B, N, N)."""
    rank = rank_of(torch.where(cand, importance.float(), float("inf")), descending=False)
    merged = cand & (rank < m[:, None])
    dest = cand & ~merged
    partner = sim.masked_fill(~dest[:, None, :], NEG).argmax(-1)
    return merged, partner


def prune_duplicates(sim: Tensor, importance: Tensor, cand: Tensor, r: Tensor) -> Tensor:
    """Zero-TPrune's S-stage: split candidates by importance into a less important half A and a
    more important half B; drop the ``r`` A tokens most similar to any B token. Returns the mask."""
    rank = rank_of(torch.where(cand, importance.float(), float("inf")), descending=False)
    half = cand.sum(1, keepdim=True) // 2
    in_a, in_b = cand & (rank < half), cand & (rank >= half)
    best = sim.masked_fill(~in_b[:, None, :], NEG).amax(-1).masked_fill(~in_a, NEG)
    return in_a & (rank_of(best, descending=True) < r[:, None]) & (best > NEG)


def grid_pool(
    n: int, protected: int, grid: tuple[int, int], window: tuple[int, int], device: torch.device | None = None
) -> tuple[Tensor, int]:
    """Average-pooling windows of a row-major patch grid as slots (N,) on ``device``; prefix tokens keep theirs."""
    h, w = grid
    kh, kw = window
    ow = -(-w // kw)
    i = torch.arange(h * w, device=device)
    slot = protected + (i // w // kh) * ow + (i % w) // kw
    rest = torch.full((n - protected - h * w,), -1, device=device)
    dst = torch.cat([torch.arange(protected, device=device), slot, rest])
    return dst, protected + (-(-h // kh)) * ow
