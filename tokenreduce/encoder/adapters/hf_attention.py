"""Run a Hugging Face attention module's projections through the model's own attention backend.

Calling the model's registered attention function (SDPA, eager, flash, ...) with the module's
own projections keeps outputs identical to the unpatched model and respects the user's
``attn_implementation``; we only add a float mask and keep the queries and keys for scoring.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import Tensor, nn
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS


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
    ctx, _ = attention_fn(module)(module, q, k, v, mask, dropout=dropout if module.training else 0.0, scaling=scaling)
    return ctx.reshape(*x.shape[:-1], -1).contiguous(), q, k, v


def run_self_attention(att: nn.Module, x: Tensor, mask: Tensor | None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """:func:`run_attention` for modules named the ViT/DINOv2 way (``q_proj``... ``head_dim``, ``scaling``,
    ``attention_dropout``)."""
    return run_attention(att, att.q_proj, att.k_proj, att.v_proj, x, mask, att.head_dim, att.scaling,
                         att.attention_dropout)
