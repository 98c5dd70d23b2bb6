"""Hugging Face ModernBERT (``ModernBertModel`` and its heads): rotary positions, alternating local/global attention.

Block (pre-LN): ``x + Wo(attn(attn_norm(x)))``; ``x + mlp(mlp_norm(x))`` (GLU MLP), with RoPE on queries and
keys and, on ``sliding_attention`` layers, a window ``|i - j| <= config.sliding_window``. In transformers 5
the layer loop, the two masks and the rotary tables live in ``ModernBertModel.forward``, and blocks take
the mask and positions by keyword, so blocks are patched as applications (``applications.py``): while
patched, ``ModernBertModel.forward`` runs the loop below (embeddings, masks, rotary tables, blocks,
``final_norm``, as the model's own forward).

Positions of reduced tokens (``positions.py``): each token keeps the position of its group's
representative, the earliest original token merged into it. After a reduction the loop computes the
rotary tables at those positions (row by row), and local layers mask keys outside the window measured
between representatives, ``|rep[i] - rep[j]| <= sliding_window``; so relative rotations and windows are
exactly those of tokens standing at the representatives' positions.

The unpadded path: transformers 5 no longer unpads ModernBERT inside the model (padding is a mask, as
for BERT), so padded batches go through the runner's size-0 padding like every text family.
FlashAttention (``attn_implementation="flash_attention_*"``) is refused: reduced blocks pass an additive
float mask (sizes, padding, window), which the flash kernels do not take; ``sdpa`` and ``eager`` work.
Also refused: ``output_attentions`` while patched, a first layer with local attention (the runner reads
padding from block 0's mask). Under ``torch.compile`` the patched loop runs eagerly: correct, not faster.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn
from transformers.masking_utils import create_bidirectional_mask, create_bidirectional_sliding_window_mask
from transformers.modeling_outputs import BaseModelOutput

from .applications import Applications
from .base import AttnOut, ModelDims
from .hf_attention import attention_fn
from .positions import representatives, tracked_sources

# (positions (B, n) of the current tokens, or None before any reduction; the (cos, sin) rotary tables)
_ROPE: ContextVar[tuple[Tensor | None, tuple[Tensor, Tensor] | None]] = ContextVar(
    "tokenreduce_modernbert_rope", default=(None, None)
)


def _owner(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if type(m).__name__ == "ModernBertModel"), None)


def _check(owner: nn.Module) -> None:
    impl = owner.config._attn_implementation or "eager"
    if impl.startswith("flash"):
        raise TypeError(
            f"unsupported ModernBERT attention {impl!r}: reduced blocks need an additive float mask (token sizes, "
            'padding, local window), which FlashAttention does not take; load with attn_implementation="sdpa"'
        )
    if owner.config.layer_types[0] != "full_attention":
        raise TypeError("unsupported ModernBERT layout: the first layer must use global attention")


@contextmanager
def rotary(positions: Tensor | None, position_embeddings: tuple[Tensor, Tensor] | None) -> Iterator[None]:
    """Make the current tokens' positions and rotary tables those :meth:`HFModernBert.attention` uses."""
    token = _ROPE.set((positions, position_embeddings))
    try:
        yield
    finally:
        _ROPE.reset(token)


@torch.compiler.disable  # positions follow merges through source records, kept only in eager code
def _loop(
    apps: Applications,
    input_ids: Tensor | None = None,
    attention_mask: Tensor | dict | None = None,
    position_ids: Tensor | None = None,
    inputs_embeds: Tensor | None = None,
    **kwargs: Any,
) -> BaseModelOutput:
    """``ModernBertModel.forward`` with one (patched) application per layer and positions that follow merges."""
    if kwargs.pop("output_attentions", False):
        raise ValueError("tokenreduce: output_attentions is not available on a patched ModernBERT")
    want_states = kwargs.pop("output_hidden_states", False)
    kwargs.pop("return_dict", None)
    if (input_ids is None) ^ (inputs_embeds is not None):
        raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
    model = apps.owner
    h = model.embeddings(input_ids=input_ids, inputs_embeds=inputs_embeds)
    b, n0 = h.shape[:2]
    if position_ids is None:
        position_ids = torch.arange(n0, device=h.device).unsqueeze(0)
    masks = attention_mask
    if not isinstance(masks, dict):
        mask_kwargs = {"config": model.config, "inputs_embeds": h, "attention_mask": attention_mask}
        masks = {
            "full_attention": create_bidirectional_mask(**mask_kwargs),
            "sliding_attention": create_bidirectional_sliding_window_mask(**mask_kwargs),
        }
    full = {t: model.rotary_emb(h, position_ids, t) for t in set(model.config.layer_types)}
    states = []
    with tracked_sources() as records:
        for app in apps:
            kind, pos = app.block.attention_type, None
            rope = full[kind]
            if records:
                pos = position_ids.expand(b, n0).gather(1, representatives(records[-1].src, h.shape[1]))
                rope = model.rotary_emb(h, pos, kind)
            states.append(h)
            with rotary(pos, rope):
                h = app(h, masks[kind], position_embeddings=rope, **kwargs)
    h = model.final_norm(h)
    return BaseModelOutput(last_hidden_state=h, hidden_states=(*states, h) if want_states else None)


class HFModernBert:
    name = "hf-modernbert"
    padded = True

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        owner = _owner(model)
        if owner is None:
            return None
        _check(owner)
        return Applications(owner, list(owner.layers), _loop)

    def default_protected(self, model: nn.Module) -> int:
        return 1  # [CLS]

    def dims(self, model: nn.Module) -> ModelDims:
        apps = self.find_layers(model)
        att, mlp = apps[0].block.attn, apps[0].block.mlp
        return ModelDims(
            hidden=att.Wqkv.in_features,
            heads=att.Wqkv.out_features // (3 * att.head_dim),
            head_dim=att.head_dim,
            ffn=mlp.Wo.in_features,
            layers=len(apps),
            ffn_matrices=3,  # GLU: Wi projects to 2 x intermediate
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        """``ModernBertAttention`` op for op, at the current tokens' rotary positions and window."""
        block = layer.block
        att = block.attn
        shape = x.shape[:-1]
        qkv = att.Wqkv(block.attn_norm(x)).view(*shape, 3, -1, att.head_dim)
        q, k, v = (t.transpose(1, 2) for t in qkv.unbind(dim=-3))
        pos, (cos, sin) = _ROPE.get()
        q, k = sys.modules[type(att).__module__].apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)
        if pos is not None and att.sliding_window is not None:  # after a reduction: window between representatives
            outside = (pos[:, :, None] - pos[:, None, :]).abs() > block.config.sliding_window
            mask = mask.masked_fill(outside[:, None], torch.finfo(mask.dtype).min)
        scaling = att.head_dim**-0.5
        ctx, _ = attention_fn(att)(
            att,
            q,
            k,
            v,
            mask,
            dropout=att.attention_dropout if att.training else 0.0,
            scaling=scaling,
            sliding_window=att.sliding_window,
            deterministic=att.deterministic_flash_attn,
        )
        out = x + att.out_drop(att.Wo(ctx.reshape(*shape, -1).contiguous()))
        return AttnOut(out, q, k, v, scaling)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        block = layer.block
        return x + block.mlp(block.mlp_norm(x))
