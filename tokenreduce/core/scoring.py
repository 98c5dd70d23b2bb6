"""Token importance and redundancy scores: pure functions on tensors, padding-aware.

Every function takes ``cand`` (B, N), the real tokens that may be reduced, and scores only those;
a row's scores depend on that row alone, so results never depend on the rest of the batch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator

import torch
from torch import Tensor


def cosine_matrix(a: Tensor, b: Tensor) -> Tensor:
    """Cosine similarity of every token of ``a`` (B, Na, D) with every token of ``b`` (B, Nb, D)."""
    a = a / a.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    b = b / b.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    return a @ b.transpose(-1, -2)


def ats_significance(cls_attn_heads: Tensor, values: Tensor) -> Tensor:
    """ATS significance (B, N): [CLS] attention times value norm, summed over heads.

    Fayyaz et al., ECCV 2022, eq. 3 (the normalization is left to the sampler).
    """
    return (cls_attn_heads.float() * values.float().norm(dim=-1)).sum(1)


def inverse_cdf_sample(scores: Tensor, cand: Tensor, k: Tensor) -> Tensor:
    """Deterministic inverse-transform sampling (ATS at inference): keep-mask (B, N).

    Candidates are sorted by score (ascending, ties by position) and their normalized cumulative
    sum forms a CDF; ``k[b]`` evenly spaced points ``(2i + 1) / 2k`` each pick the first token whose
    CDF reaches them. Repeated picks collapse, so a row keeps between 1 and ``min(k, candidates)``
    tokens (none when ``k == 0``); a row of equal scores keeps exactly ``min(k, candidates)``.
    """
    b, n = scores.shape
    key = torch.where(cand, scores.double(), float("inf"))
    order = torch.sort(key, dim=1, stable=True).indices
    vals = torch.where(cand, scores.double().clamp(min=0), 0.0).gather(1, order)
    count = cand.sum(1)
    total = vals.sum(1, keepdim=True)
    ranks = torch.arange(n, device=scores.device).expand(b, n)
    uniform = (ranks + 1).double() / count.clamp(min=1)[:, None]
    cdf = torch.where(total > 0, vals.cumsum(1) / total.clamp(min=1e-300), uniform)
    cdf = torch.where(ranks < count[:, None], cdf, 2.0)  # non-candidates sit after the end
    kmax = int(k.max()) if k.numel() else 0
    if kmax == 0:
        return torch.zeros_like(cand)
    i = torch.arange(kmax, device=scores.device, dtype=torch.float64)
    pts = (2 * i[None] + 1) / (2 * k.clamp(min=1)[:, None].double())  # (B, kmax)
    picked = torch.searchsorted(cdf.contiguous(), pts.contiguous(), side="left")
    picked = torch.minimum(picked, (count - 1).clamp(min=0)[:, None])
    live = (i[None] < k[:, None]) & (count[:, None] > 0)
    hit = torch.zeros(b, n + 1, dtype=torch.bool, device=scores.device)
    hit.scatter_(1, torch.where(live, picked, n), True)
    keep = torch.zeros_like(cand)
    keep.scatter_(1, order, hit[:, :n])
    return keep & cand


def weighted_pagerank(attn: Tensor, valid: Tensor, iters: int) -> Tensor:
    """Zero-TPrune's weighted PageRank per head (B, H, N): s ← s·A, from the uniform distribution.

    ``attn`` (B, H, N, N) holds row-stochastic attention probabilities (query rows, key columns).
    A token is important when important tokens attend to it. Padding starts with no mass and, being
    masked as a key, never receives any.
    """
    b, h, n, _ = attn.shape
    s = (valid.float() / valid.sum(1, keepdim=True).clamp(min=1))[:, None, None, :]
    s = s.expand(-1, h, -1, -1).reshape(b * h, 1, n)
    graph = attn.reshape(b * h, n, n)  # a view for contiguous blocks: one 3-D bmm per step (no 4-D matmul folding)
    for _ in range(iters):
        s = torch.bmm(s, graph)  # (B·H, 1, N) @ (B·H, N, N): one matrix-vector product per head
    return s.view(b, h, n)


def attention_received(attn: Tensor, valid: Tensor) -> Tensor:
    """Mean attention each key receives from the real queries, averaged over heads (B, N)."""
    w = valid.float()[:, None, :, None]
    return (attn * w).sum(2).mean(1) / valid.sum(1, keepdim=True).clamp(min=1)


def pitome_energy(sim: Tensor, cand: Tensor, margin: float, alpha: float = 1.0) -> Tensor:
    """PiToMe energy (B, N): mean over real tokens j of ELU(cos(i, j) − margin), −inf off ``cand``.

    Tran et al., NeurIPS 2024, eq. 4: a token with many close neighbours (high energy) is redundant
    and safe to merge; an isolated one (low energy) is protected. ``sim`` is (B, N, N).
    """
    e = torch.nn.functional.elu(sim.float() - margin, alpha=alpha)
    e = (e * cand[:, None, :]).sum(-1) / cand.sum(1, keepdim=True).clamp(min=1)
    return torch.where(cand, e, float("-inf"))


def attention_blocks(
    q: Tensor, k: Tensor, scaling: float, valid: Tensor, log_sizes: Tensor | None = None, block_bytes: int = 1 << 20
) -> Iterator[tuple[int, int, int, int, Tensor]]:
    """Softmax attention of ``q`` (B, H, N, d) over ``k`` (B, Hk, N, d), a few heads at a time.

    Yields ``(b0, b1, h0, h1, probs)`` with ``probs`` (b1 − b0, h1 − h0, N, N) in float32: the rows of
    :func:`tokenreduce.core.attention.query_rows` for those rows and heads (padding keys masked,
    ``log_sizes`` added to each key). Each block holds about ``block_bytes`` (at least one head), so
    a caller that reduces every block to O(N) numbers (column sums, PageRank) needs O(N) memory per
    head instead of the (B, H, N, N) tensor, and the block stays in cache while it is used.
    """
    b, h, n, _ = q.shape
    if k.shape[1] != h:
        k = k.repeat_interleave(h // k.shape[1], dim=1)
    bias = torch.zeros(b, n, dtype=torch.float32, device=q.device)
    if log_sizes is not None:
        bias = bias + log_sizes.float()
    bias = bias.masked_fill(~valid.bool(), torch.finfo(torch.float32).min)[:, None, None, :]
    per_head = max(n * n * 4, 1)
    heads = max(1, min(h, block_bytes // per_head))
    rows = max(1, block_bytes // (per_head * h)) if heads == h else 1
    for b0 in range(0, b, rows):
        b1 = min(b, b0 + rows)
        for h0 in range(0, h, heads):
            h1 = min(h, h0 + heads)
            logits = (q[b0:b1, h0:h1].float() @ k[b0:b1, h0:h1].float().transpose(-1, -2)) * scaling
            yield b0, b1, h0, h1, (logits + bias[b0:b1]).softmax(-1)


def received_stat(probs: Tensor, valid: Tensor) -> Tensor:
    """Per head, the mean attention each key receives from the real queries (b, h, N), of a block of
    probabilities ``probs`` (b, h, N, N) whose rows' real tokens are ``valid`` (b, N)."""
    w = (valid.float() / valid.sum(1, keepdim=True).clamp(min=1))[:, None, None, :]
    return (w @ probs).squeeze(2)


def attention_stats_blockwise(
    q: Tensor,
    k: Tensor,
    scaling: float,
    valid: Tensor,
    stat: Callable[[Tensor, Tensor], Tensor],
    log_sizes: Tensor | None = None,
    v: Tensor | None = None,
    block_bytes: int = 1 << 20,
) -> tuple[Tensor, Tensor | None]:
    """A per-head statistic (B, H, N) of the attention of ``q`` over ``k``, reduced block by block by
    ``stat(probs, valid)`` (:func:`attention_blocks`), and, given the values ``v`` (B, Hk, N, d), the
    attention output (B, H, N, d) from the same probabilities.

    With ``v`` this replaces the block's fused attention kernel: a method that needs every attention
    row (attention received, PageRank) gets it from the one Q·Kᵀ and softmax the output needs, instead
    of a second Q·Kᵀ and softmax next to the kernel. The output is ``probs @ v`` in float32, cast to
    ``v``'s dtype (equal to SDPA up to rounding). Memory: one block of probabilities at a time.
    """
    b, h, n, _ = q.shape
    out = torch.empty(b, h, n, dtype=torch.float32, device=q.device)
    ctx = None
    if v is not None:
        if v.shape[1] != h:
            v = v.repeat_interleave(h // v.shape[1], dim=1)
        ctx = torch.empty(b, h, n, v.shape[-1], dtype=v.dtype, device=q.device)
    for b0, b1, h0, h1, p in attention_blocks(q, k, scaling, valid, log_sizes, block_bytes):
        out[b0:b1, h0:h1] = stat(p, valid[b0:b1])
        if ctx is not None:
            ctx[b0:b1, h0:h1] = p @ v[b0:b1, h0:h1].float()
    return out, ctx


def attention_received_blockwise(
    q: Tensor, k: Tensor, scaling: float, valid: Tensor, log_sizes: Tensor | None = None, block_bytes: int = 1 << 20
) -> Tensor:
    """:func:`attention_received` of the attention of ``q`` over ``k`` (B, N), computed block by block
    (:func:`attention_blocks`): the (B, H, N, N) probabilities are never held at once."""
    out, _ = attention_stats_blockwise(q, k, scaling, valid, received_stat, log_sizes, block_bytes=block_bytes)
    return out.mean(1)


def weighted_pagerank_blockwise(
    q: Tensor,
    k: Tensor,
    scaling: float,
    valid: Tensor,
    iters: int,
    log_sizes: Tensor | None = None,
    block_bytes: int = 1 << 20,
) -> Tensor:
    """:func:`weighted_pagerank` (B, H, N) of the attention of ``q`` over ``k``, one block of heads at
    a time (:func:`attention_blocks`): each head's graph is built once, stays in cache for its
    ``iters`` products, and is freed; memory O(N) per head instead of the (B, H, N, N) tensor."""
    stat = functools.partial(weighted_pagerank, iters=iters)
    return attention_stats_blockwise(q, k, scaling, valid, stat, log_sizes, block_bytes=block_bytes)[0]
