"""Turn per-entry scores into a compressed, left-aligned dense KV layout (pure tensor functions).

Each row b of a batch keeps ``k_b = ceil(keep * n_b)`` of its ``n_b`` real entries per KV head.
Rows are stored with a common length ``L = max_b k_b``: row b gets ``L - k_b`` masked filler entries
first, then its kept entries in their original order -- the same layout as left padding, and the
same for every head and layer, so a single 2D attention mask stays valid for the whole model.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.noise import ranked_noise


def row_budgets(valid: Tensor, keep: float | Tensor) -> Tensor:
    """Entries kept per row (B,): ceil(keep * real tokens), at least 1 where a row has any
    (``keep`` may also be a (B,) tensor of entry counts, e.g. decode-time targets, capped at the row's)."""
    n = valid.sum(dim=-1)
    if isinstance(keep, Tensor):
        k = keep.to(device=n.device, dtype=torch.long)
    else:
        k = torch.ceil(n.double() * keep - 1e-9).long()
    return torch.minimum(k.clamp(min=1), n)


# Protected entries outrank every score: the newest protected first, then sinks, then scores.
# Scores are finite and far below these tiers (attention probabilities, norms, noise).
_NEWEST = 2.0**100  # + real rank * _STEP: the newer, the higher (distinct up to 2**22 tokens in float32)
_STEP = 2.0**78
_SINK = 2.0**90


def protect(scores: Tensor, valid: Tensor, sinks: int, recent: int) -> Tensor:
    """Scores with padding at -inf and protected entries ranked above every score, so that a budget
    smaller than what is protected keeps, in this order: the newest protected entries (the last
    ``recent`` real tokens and every entry a press scored +inf, i.e. its own window), newest first;
    then the first ``sinks`` real tokens, oldest first; then the best by score.

    ``valid`` is (B, N), or (B, Hkv, N) when each KV head holds its own entries (a ragged layer): ranks
    then count each head's own entries."""
    v = valid[:, None, :] if valid.ndim == 2 else valid
    s = scores.float().masked_fill(~v, float("-inf"))
    rank = real_rank(v)
    n_real = v.sum(-1, keepdim=True)
    newest = torch.isposinf(s) | (v & (rank >= n_real - recent))
    s = s.masked_fill(v & (rank < sinks), _SINK)
    return torch.where(newest & v, _NEWEST + rank.float() * _STEP, s)


def select(scores: Tensor, valid: Tensor, keep: float | Tensor) -> tuple[Tensor, Tensor]:
    """Indices (B, Hkv, L) into the N cached entries and the new prefix mask (B, L) (``keep``: a fraction
    or per-row entry counts, see :func:`row_budgets`)."""
    k = row_budgets(valid, keep)
    length = int(k.max())
    # stable sort: ties (e.g. several protected tokens) break by position, independent of the batch
    top = scores.sort(dim=-1, descending=True, stable=True).indices[..., :length]  # best first
    rank = torch.arange(length, device=scores.device)
    filler = rank[None, None, :] >= k[:, None, None]  # lowest-ranked slots beyond the row's budget
    order = torch.where(filler, -1, top).sort(dim=-1).indices  # fillers first, then by position
    idx = top.gather(-1, order)
    prefix_mask = rank[None, :] >= (length - k)[:, None]
    return idx, prefix_mask


def gather(x: Tensor, idx: Tensor) -> Tensor:
    """x (B, Hkv, N, D) at idx (B, Hkv, L) -> (B, Hkv, L, D)."""
    return x.gather(2, idx[..., None].expand(*idx.shape, x.shape[-1]))


def keep_count(n: int, keep: float) -> int:
    return max(1, math.ceil(n * keep - 1e-9))


def real_rank(valid: Tensor) -> Tensor:
    """Index of each entry among its row's real tokens (B, N); padding gets 0."""
    return (valid.long().cumsum(-1) - 1).clamp(min=0)


def row_noise(valid: Tensor, shape: tuple[int, ...], seed: int) -> Tensor:
    """Uniform noise (B, *shape, N) indexed by each token's rank among real tokens, so a row's noise
    does not depend on how much padding the batch gave it (:func:`tokenreduce.core.noise.ranked_noise`)."""
    return ranked_noise(real_rank(valid), shape, seed, stream=0)
