"""Hugging Face MPNet (``MPNetModel`` and its heads; all-mpnet-base-v2 and other sentence-transformers).

Block (post-LN, BERT-shaped): ``a = LayerNorm(x + o(attn(x)))``; ``output(intermediate(a), a)``, where the
attention logits get a relative position bias ``(B, H, N, N)`` that ``MPNetEncoder`` computes once per
forward from the positions ``0..N-1``. Blocks return tuples and take that bias, so they are patched as
applications (``applications.py``): while patched, ``MPNetEncoder.forward`` runs the loop below.

Positions of reduced tokens (``positions.py``): each token keeps the position of its group's
*representative*, the earliest original token merged into it. Before each block the loop gathers the
encoder's full bias at those positions, ``bias[b, h, i, j] = full[b, h, rep[b, i], rep[b, j]]``, which
equals the bias MPNet computes for tokens at positions ``rep`` (its own buckets of ``rep[j] - rep[i]``).

Limits: scorers that rebuild attention rows from queries and keys (EViT's [CLS] attention, attention
received, ...) see the logits without the position bias. ``output_attentions`` is refused while
patched (reduced blocks compute no attention matrix). Under ``torch.compile`` the patched loop runs
eagerly (the source records that carry positions are kept only outside compiled code): correct, not faster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from .applications import Applications
from .base import AttnOut, ModelDims
from .positions import gather_pairs, representatives, tracked_sources

_BIAS: ContextVar[Tensor | None] = ContextVar("tokenreduce_mpnet_position_bias", default=None)


def _owner(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if type(m).__name__ == "MPNetEncoder"), None)


@contextmanager
def position_bias(bias: Tensor | None) -> Iterator[None]:
    """Make ``bias`` (B, H, n, n) the relative position bias :meth:`HFMPNet.attention` adds (per call, per thread)."""
    token = _BIAS.set(bias)
    try:
        yield
    finally:
        _BIAS.reset(token)


@torch.compiler.disable  # positions follow merges through source records, kept only in eager code
def _loop(
    apps: Applications,
    hidden_states: Tensor,
    attention_mask: Tensor | None = None,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
    return_dict: bool = False,
    **kwargs: Any,
):
    """``MPNetEncoder.forward`` with one (patched) application per block and positions that follow merges."""
    if output_attentions:
        raise ValueError("tokenreduce: output_attentions is not available on a patched MPNet (no attention matrix)")
    full = apps.owner.compute_position_bias(hidden_states)
    h, states = hidden_states, []
    with tracked_sources() as records:
        for app in apps:
            states.append(h)
            bias = full if not records else gather_pairs(full, representatives(records[-1].src, h.shape[1]))
            with position_bias(bias):
                h = app(h, attention_mask, bias, **kwargs)
    all_states = (*states, h) if output_hidden_states else None
    if not return_dict:
        return tuple(v for v in (h, all_states) if v is not None)
    return BaseModelOutput(last_hidden_state=h, hidden_states=all_states)


class HFMPNet:
    name = "hf-mpnet"
    padded = True

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        owner = _owner(model)
        return None if owner is None else Applications(owner, list(owner.layer), _loop)

    def default_protected(self, model: nn.Module) -> int:
        return 1  # <s>

    def dims(self, model: nn.Module) -> ModelDims:
        apps = self.find_layers(model)
        sa = apps[0].block.attention.attn
        return ModelDims(
            hidden=sa.q.in_features,
            heads=sa.num_attention_heads,
            head_dim=sa.attention_head_size,
            ffn=apps[0].block.intermediate.dense.out_features,
            layers=len(apps),
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        """``MPNetAttention`` op for op, with the position bias of the current tokens."""
        att = layer.block.attention
        sa = att.attn
        shape = (*x.shape[:-1], -1, sa.attention_head_size)
        q = sa.q(x).view(shape).transpose(1, 2)
        k = sa.k(x).view(shape).transpose(1, 2)
        v = sa.v(x).view(shape).transpose(1, 2)
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(sa.attention_head_size)
        bias = _BIAS.get()
        if bias is not None:
            scores = scores + bias
        if mask is not None:
            scores = scores + mask
        probs = sa.dropout(nn.functional.softmax(scores, dim=-1))
        ctx = torch.matmul(probs, v).permute(0, 2, 1, 3).reshape(*x.shape[:-1], sa.all_head_size)
        return AttnOut(att.LayerNorm(att.dropout(sa.o(ctx)) + x), q, k, v, 1 / math.sqrt(sa.attention_head_size))

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        block = layer.block
        return block.output(block.intermediate(x), x)
