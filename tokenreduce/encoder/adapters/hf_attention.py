"""Run a Hugging Face attention module's projections through the model's own attention backend.

Calling the model's registered attention function (SDPA, eager, flash, ...) with the module's
own projections keeps outputs identical to the unpatched model and respects the user's
``attn_implementation``; we only add a float mask and keep the queries and keys for scoring.
Under ``attn_implementation="flex_attention"`` the runner's key bias (log sizes, padding) enters as
a FlexAttention ``score_mod`` over one value per key instead (no float mask; fused on CUDA).
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from ...core.attention import key_bias_attention


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
    if module.config._attn_implementation == "flex_attention" and _flex_ready(mask):
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
