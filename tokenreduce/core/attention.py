"""Attention rows of a few chosen queries, rebuilt from q and k without eager attention.

Fused kernels (SDPA, flash) never return attention weights, yet [CLS]-attention scorers need the row
of one query over every key. Recomputing only the rows asked for costs O(nq x N) per head instead of
the full N x N matrix. Computed in float32 whatever the model's dtype, so half-precision towers rank
tokens as a float32 model would.
"""

from __future__ import annotations

import torch
from torch import Tensor


def query_rows(
    q: Tensor, k: Tensor, scaling: float, key_mask: Tensor | None = None, log_sizes: Tensor | None = None
) -> Tensor:
    """Softmax attention rows (B, H, nq, N) of queries ``q`` (B, H, nq, d) over keys ``k`` (B, Hk, N, d).

    ``key_mask`` (B, N): real keys (others get no weight). ``log_sizes`` (B, N): an additive key bias,
    log of each key's size for ToMe's proportional attention. GQA: ``Hk`` may divide ``H``. A row whose
    keys are all masked comes out uniform rather than NaN.
    """
    if k.shape[1] != q.shape[1]:
        k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    logits = (q.float() @ k.float().transpose(-1, -2)) * scaling
    if log_sizes is not None:
        logits = logits + log_sizes.float()[:, None, None, :]
    if key_mask is not None:
        logits = logits.masked_fill(~key_mask.bool()[:, None, None, :], torch.finfo(torch.float32).min)
    return logits.softmax(-1)


def cls_row(
    q: Tensor, k: Tensor, scaling: float, key_mask: Tensor | None = None, log_sizes: Tensor | None = None
) -> Tensor:
    """Head-averaged attention row (B, N) of the first query ([CLS]); ``q`` may hold only that query."""
    return query_rows(q[:, :, :1], k, scaling, key_mask, log_sizes)[:, :, 0].mean(1)
