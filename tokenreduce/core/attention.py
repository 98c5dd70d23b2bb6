"""Attention rows of a few chosen queries, rebuilt from q and k without eager attention.

Fused kernels (SDPA, flash) never return attention weights, yet [CLS]-attention scorers need the row
of one query over every key. Recomputing only the rows asked for costs O(nq x N) per head instead of
the full N x N matrix. Computed in float32 whatever the model's dtype, so half-precision towers rank
tokens as a float32 model would. Also: attention with one additive bias per key through FlexAttention
(proportional attention without a float mask, so fused kernels stay usable).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch import Tensor
from torch.nn.attention.flex_attention import BlockMask, flex_attention


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


@functools.cache
def _compiled_flex() -> Callable:
    """FlexAttention compiled once per process (the fused kernel; eager flex is an unfused reference)."""
    return torch.compile(flex_attention, dynamic=True)


def key_bias_attention(
    q: Tensor, k: Tensor, v: Tensor, scaling: float, key_bias: Tensor | None = None,
    block_mask: BlockMask | None = None, compiled: bool | None = None,
) -> Tensor:
    """``softmax(q·kᵀ·scaling + key_bias[b, j]) · v`` (B, H, N, d) with FlexAttention.

    ``key_bias`` (B, N) is one additive bias per key (ToMe's proportional attention: log of the key's
    size; padding: a large negative value). It enters as a ``score_mod`` reading that vector, so no
    (B, 1, N, N) float mask is built and a fused kernel stays usable where SDPA would have to leave
    its flash kernel (flash takes no float mask). Equal to SDPA with ``attn_mask=key_bias[:, None, None]``
    (tested). ``block_mask``: a flex mask to apply as well. ``compiled``: run the compiled kernel
    (default: on CUDA; on the CPU the eager reference runs unless asked, compiling costs seconds per shape).
    """

    def add_key_bias(score: Tensor, b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return score + key_bias[b, kv_idx]

    fn = _compiled_flex() if (q.is_cuda if compiled is None else compiled) else flex_attention
    return fn(q, k, v, score_mod=None if key_bias is None else add_key_bias, block_mask=block_mask, scale=scaling)
