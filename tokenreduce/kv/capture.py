"""Queries as the model computed them, for families whose projections a press cannot recompute.

Fused projections (Phi-3 ``qkv_proj``, GPT-NeoX ``query_key_value``, GPT-2 ``c_attn``), partial rotary and
absolute positions all end in the same call: the attention function transformers looks up by
``config._attn_implementation``, which receives the post-projection, post-rotary queries of every family.
:func:`capture_queries` routes the model's attention through a registered wrapper that records each layer's
queries and then calls the model's own implementation (SDPA, eager, or the ragged one), so outputs are
unchanged. A press then scores from :class:`CapturedQueries`: an attention stand-in whose ``q_proj`` is the
identity and whose rotary is cos = 1, sin = 0, so ``kv/scoring.py``'s recomputation returns the recorded
queries exactly.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, AttentionMaskInterface
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

PREFIX = "tokenreduce_capture_"
_watched: set[nn.Module] = set()  # modules whose queries the current forward records (a press is armed)
_records: dict[nn.Module, tuple[Tensor, float]] = {}  # attention module -> (queries (B, H, q, D), scaling)


def _delegate(module: nn.Module, impl: str):
    """The attention function ``impl`` names for ``module`` (its modeling file's eager one for "eager")."""
    if impl in ALL_ATTENTION_FUNCTIONS:
        return ALL_ATTENTION_FUNCTIONS[impl]
    return sys.modules[type(module).__module__].eager_attention_forward


def _wrapper(impl: str):
    def capture_attention(module, query, key, value, attention_mask, scaling=None, **kwargs):
        """Record ``query`` (and the scaling the model attends with), then attend as ``impl`` does."""
        if module in _watched:
            default = getattr(module, "scaling", None) or query.shape[-1] ** -0.5
            _records[module] = (query, default if scaling is None else scaling)
        return _delegate(module, impl)(module, query, key, value, attention_mask, scaling=scaling, **kwargs)

    return capture_attention


def _register(impl: str) -> str:
    """The registered name that records queries around ``impl`` (registered once, with ``impl``'s masks)."""
    name = PREFIX + impl
    if name not in ALL_ATTENTION_FUNCTIONS:
        if impl not in ALL_MASK_ATTENTION_FUNCTIONS:
            raise ValueError(f"recording queries needs an attention implementation with 4D masks (sdpa, eager); "
                             f"got {impl!r}")
        AttentionInterface.register(name, _wrapper(impl))
        AttentionMaskInterface.register(name, ALL_MASK_ATTENTION_FUNCTIONS[impl])
    return name


@contextmanager
def capture_queries(model: nn.Module, modules: list[nn.Module]) -> Iterator[None]:
    """Route ``model``'s attention through the recording wrapper inside the block; ``modules`` record their
    queries in forwards announced by :func:`watch` (only a compressing forward holds them)."""
    old = model.config._attn_implementation
    model.config._attn_implementation = _register(old)
    try:
        yield
    finally:
        model.config._attn_implementation = old
        for m in modules:
            _watched.discard(m)
            _records.pop(m, None)


def watch(modules: list[nn.Module]) -> None:
    """Record the queries of ``modules`` in the next forward (until :func:`take`)."""
    _watched.update(modules)


class CapturedQueries(nn.Module):
    """An attention stand-in for :class:`tokenreduce.kv.presses.base.LayerView`: ``q_proj`` is the identity
    over recorded queries laid out as (B, q, H*D), no rotary left to apply (pass :func:`unit_rotary`)."""

    def __init__(self, layer_idx: int, head_dim: int, scaling: float):
        super().__init__()
        self.q_proj = nn.Identity()
        self.layer_idx, self.head_dim, self.scaling = layer_idx, head_dim, scaling


def take(module: nn.Module) -> tuple[CapturedQueries, Tensor, Tensor, Tensor]:
    """The last recorded queries of ``module`` as ``(stand-in, hidden, cos, sin)`` for a press's view:
    ``hidden`` (B, q, H*D) are the queries, cos = 1 and sin = 0 leave them as they are."""
    _watched.discard(module)
    query, scaling = _records.pop(module)
    b, h, q, d = query.shape
    hidden = query.transpose(1, 2).reshape(b, q, h * d)
    cos = torch.ones(b, q, d, dtype=query.dtype, device=query.device)
    return CapturedQueries(module.layer_idx, d, float(scaling)), hidden, cos, torch.zeros_like(cos)
