"""Run a Hugging Face attention module's projections through the model's own attention backend.

Calling the model's registered attention function (SDPA, eager, flash, ...) with the module's
own projections keeps outputs identical to the unpatched model and respects the user's
``attn_implementation``; we only add a float mask and keep the queries and keys for scoring.
Under ``attn_implementation="flex_attention"`` the runner's key bias (log sizes, padding) enters as
a FlexAttention ``score_mod`` over one value per key instead (no float mask; fused on CUDA).

A reducing layer whose method needs a statistic of every attention row (MCTF's attention received,
Zero-TPrune's PageRank) sends a :class:`StatsRequest`: with the eager or SDPA backend the attention is
then computed explicitly, a few heads at a time, and the same probabilities give both the output and
the statistic (one Q·Kᵀ and softmax instead of the kernel's plus a second one for the scores).
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ...core.attention import key_bias_attention
from ...core.scoring import attention_stats_blockwise


@dataclass(eq=False)
class StatsRequest:
    """The runner's request to one block's attention: compute it explicitly and reduce its probabilities
    with ``stat`` (see :func:`tokenreduce.core.scoring.attention_stats_blockwise`).

    ``valid`` (B, N) and ``log_sizes`` (B, N, or None) describe the key bias the runner passed as
    ``mask``; the request applies only to a call with that very mask (a family that adds a bias of
    its own, e.g. BEiT's relative positions, falls back to its kernel). ``stats`` is filled when the
    request was served; otherwise the runner recomputes the statistic from q and k.
    """

    stat: Callable[[Tensor, Tensor], Tensor]
    valid: Tensor
    log_sizes: Tensor | None
    mask: Any
    stats: Tensor | None = None


# set by the runner around one block's attention call only (never while compiling)
STATS_REQUEST: ContextVar[StatsRequest | None] = ContextVar("tokenreduce_stats_request", default=None)


def attention_fn(module: nn.Module) -> Callable:
    """The attention function the module's own forward would use."""
    eager = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
    impl = module.config._attn_implementation
    if impl in (None, "eager"):
        if eager is None:
            raise TypeError(f"{type(module).__name__}: no eager attention function found in its module")
        return eager
    return ALL_ATTENTION_FUNCTIONS.get_interface(impl, eager)


def run_attention(
    module: nn.Module,
    q_proj: nn.Module,
    k_proj: nn.Module,
    v_proj: nn.Module,
    x: Tensor,
    mask: Tensor | None,
    head_dim: int,
    scaling: float,
    dropout: float,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Multi-head self-attention context (B, N, H*d), plus queries, keys and values (B, H, N, d)."""
    shape = (*x.shape[:-1], -1, head_dim)
    q = q_proj(x).view(shape).transpose(1, 2)
    k = k_proj(x).view(shape).transpose(1, 2)
    v = v_proj(x).view(shape).transpose(1, 2)
    req = None if torch.compiler.is_compiling() else STATS_REQUEST.get()  # dynamo cannot trace a ContextVar
    if req is not None and _serves(req, module, mask, dropout):
        req.stats, ctx = attention_stats_blockwise(q, k, scaling, req.valid, req.stat, req.log_sizes, v=v)
        ctx = ctx.transpose(1, 2)
    elif module.config._attn_implementation == "flex_attention" and _flex_ready(mask):
        if module.training and dropout > 0:
            raise ValueError("flex_attention has no attention dropout: use the model in eval mode")
        key_bias = mask[:, 0, 0, :] if isinstance(mask, Tensor) else None
        block_mask = mask if isinstance(mask, BlockMask) else None
        ctx = key_bias_attention(q, k, v, scaling, key_bias, block_mask).transpose(1, 2)
    else:
        impl = module.config._attn_implementation or ""
        if impl.startswith("flash") and isinstance(mask, Tensor) and mask.is_floating_point():
            raise ValueError(
                f"attn_implementation={impl!r} takes no float mask, which this reduced block needs (token sizes "
                'or padding): use "sdpa" or "flex_attention", or prop_attn=False on unpadded images'
            )
        ctx, _ = attention_fn(module)(module, q, k, v, mask, dropout=dropout if module.training else 0.0,
                                      scaling=scaling)
    return ctx.reshape(*x.shape[:-1], -1).contiguous(), q, k, v


def _serves(req: StatsRequest, module: nn.Module, mask: Any, dropout: float) -> bool:
    """Whether this attention call computes the runner's statistic itself: not served yet, the runner's
    own mask, the eager or SDPA backend (flash and flex keep their kernels), no attention dropout."""
    impl = module.config._attn_implementation
    return (req.stats is None and mask is req.mask and impl in (None, "eager", "sdpa")
            and not (module.training and dropout > 0))


def _flex_ready(mask: Tensor | BlockMask | None) -> bool:
    """Whether a reduced block under ``flex_attention`` can take ``mask`` as a per-key score_mod: none, the
    model's own flex mask, or the runner's key bias (B, 1, 1, N) (which transformers' flex wrapper would
    index as a (B, 1, N, N) mask)."""
    return mask is None or isinstance(mask, BlockMask) or (mask.dim() == 4 and mask.shape[1:3] == (1, 1))


def run_self_attention(att: nn.Module, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`run_attention` for modules named the ViT/DINOv2 way (``q_proj``... ``head_dim``, ``scaling``,
    ``attention_dropout``)."""
    return run_attention(att, att.q_proj, att.k_proj, att.v_proj, x, mask, att.head_dim, att.scaling,
                         att.attention_dropout)
