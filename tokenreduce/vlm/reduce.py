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

    Tokens alternate between sets A and B; the most similar A tokens merge into their best B match
    (size-weighted mean). Rounds remove at most half the tokens each.
    """
    idx = torch.arange(emb.shape[0], device=emb.device)
    x, size = emb.double(), torch.ones(emb.shape[0], dtype=torch.float64, device=emb.device)
    while x.shape[0] > k:
        a, b = torch.arange(0, x.shape[0], 2), torch.arange(1, x.shape[0], 2)
        r = min(x.shape[0] - k, len(a), len(b))
        xn = F.normalize(x, dim=-1)
        sim = xn[a] @ xn[b].T
        best_val, best = sim.max(dim=1)
        merged_a = torch.sort(best_val, descending=True, stable=True).indices[:r]
        stay = torch.ones(len(a), dtype=torch.bool)
        stay[merged_a] = False
        xb, sb = x[b] * size[b, None], size[b].clone()
        xb.index_add_(0, best[merged_a], x[a[merged_a]] * size[a[merged_a], None])
        sb.index_add_(0, best[merged_a], size[a[merged_a]])
        keep_idx = torch.cat([idx[a[stay]], idx[b]])
        keep_x = torch.cat([x[a[stay]], xb / sb[:, None]])
        keep_s = torch.cat([size[a[stay]], sb])
        order = torch.argsort(keep_idx)
        idx, x, size = keep_idx[order], keep_x[order], keep_s[order]
    return idx, x.to(emb.dtype)


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
