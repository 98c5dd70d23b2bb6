"""Hugging Face BEiT and Data2Vec-vision: pre-LN ViT blocks with a relative position bias (and LayerScale).

Block = x + λ1·attn(ln1(x)); x + λ2·mlp(ln2(x)), where the attention logits add a relative position bias
(H, N, N) over the [CLS] token and the patch grid: one table per block (``use_relative_position_bias``),
one shared by all blocks (``use_shared_relative_position_bias``), or both. The bias is computed from the
image's patch grid for ``N`` tokens, so blocks are patched as applications (``applications.py``): while
patched, the module that runs the block loop (``BeitModel`` / ``Data2VecVisionEncoder``) runs the loop
below, which hands each block the bias *of its current tokens*.

Positions of reduced tokens (``positions.py``): a merged token keeps the position of its group's
representative (its earliest original token; [CLS] stays [CLS]). The full bias, computed once per block
for the original ``N0`` tokens, is gathered at those positions, ``bias[b, h, i, j] = full[h, rep[b, i],
rep[b, j]]`` — exactly the bias BEiT gives tokens at positions ``rep``.

Limits: scorers that rebuild attention rows from queries and keys (EViT's [CLS] attention) see the logits
without the position bias. ``output_attentions`` / ``output_hidden_states`` are refused while patched
(reduced blocks keep no attention matrix and the patched loop records no states). Under ``torch.compile``
the patched loop runs eagerly (positions come from source records, kept only outside compiled code):
correct, not faster.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

import torch
from torch import Tensor, nn

from .applications import Applications
from .base import AttnOut, ModelDims
from .hf_attention import run_attention
from .positions import gather_pairs, representatives, tracked_sources

# the position-bias terms (each (1 or B, H, n, n)) the block being run adds to its logits, in the model's order
_TERMS: ContextVar[tuple[Tensor, ...]] = ContextVar("tokenreduce_beit_position_bias", default=())


@contextmanager
def position_terms(terms: tuple[Tensor, ...]) -> Iterator[None]:
    """Make ``terms`` the relative-position bias :meth:`HFBeit.attention` adds (per call, per thread)."""
    token = _TERMS.set(terms)
    try:
        yield
    finally:
        _TERMS.reset(token)


def _refuse_outputs(kwargs: dict[str, Any]) -> None:
    for key in ("output_attentions", "output_hidden_states"):
        if kwargs.get(key):
            raise ValueError(f"tokenreduce: {key} is not available on a patched BEiT / Data2Vec-vision model")


def _window(config: Any, resolution: tuple[int, int]) -> tuple[int, int]:
    return (resolution[0] // config.patch_size, resolution[1] // config.patch_size)


def _terms(
    per_layer: nn.Module | None, shared: Tensor | None, window: tuple[int, int], interp: bool, n0: int, records: list
) -> tuple[tuple[Tensor, ...], Tensor | None]:
    """(terms :meth:`HFBeit.attention` adds, the shared bias still to pass to an unpatched block).

    Before any reduction the block's own forward adds its own table, so only that table is a term and the
    shared bias goes in the mask, as the model does; after one, both are gathered at the representatives."""
    own = None if per_layer is None else per_layer(window, interp, dim_size=n0)
    if not records:
        return (() if own is None else (own,)), shared
    rep = representatives(records[-1].src, records[-1].sizes.shape[1])
    return tuple(gather_pairs(t, rep) for t in (own, shared) if t is not None), None


@torch.compiler.disable  # positions follow merges through source records, kept only in eager code
def _beit_loop(
    apps: Applications,
    pixel_values: Tensor,
    bool_masked_pos: Tensor | None = None,
    interpolate_pos_encoding: bool = False,
    attention_mask: Tensor | None = None,
    **kwargs: Any,
):
    """``BeitModel.forward`` with one (patched) application per block and position biases that follow merges."""
    from transformers.masking_utils import create_bidirectional_mask
    from transformers.models.beit.modeling_beit import BeitModelOutputWithPooling

    _refuse_outputs(kwargs)
    model = apps.owner
    h = model.embeddings(pixel_values, bool_masked_pos=bool_masked_pos)
    resolution = tuple(pixel_values.shape[2:])
    window, n0 = _window(model.config, resolution), h.shape[1]
    mask = create_bidirectional_mask(config=model.config, inputs_embeds=h, attention_mask=attention_mask)
    shared = None if model.shared_position_bias is None else model.shared_position_bias(
        window, interpolate_pos_encoding=interpolate_pos_encoding, dim_size=n0
    )
    with tracked_sources() as records:
        for app in apps:
            terms, pending = _terms(app.block.relative_position_bias, shared, window, interpolate_pos_encoding, n0,
                                    records)
            block_mask = mask if pending is None else (pending + mask if mask is not None else pending)
            with position_terms(terms):
                h = app(h, block_mask, interpolate_pos_encoding=interpolate_pos_encoding, resolution=resolution)
    out = model.layernorm(h)
    pooled = model.pooler(out) if model.pooler is not None else None
    return BeitModelOutputWithPooling(last_hidden_state=out, pooler_output=pooled)


@torch.compiler.disable  # positions follow merges through source records, kept only in eager code
def _data2vec_loop(
    apps: Applications,
    hidden_states: Tensor,
    output_attentions: bool = False,
    output_hidden_states: bool = False,
    interpolate_pos_encoding: bool = False,
    resolution: tuple[int, int] | None = None,
    return_dict: bool = True,
):
    """``Data2VecVisionEncoder.forward`` with one (patched) application per block."""
    from transformers.modeling_outputs import BaseModelOutput

    _refuse_outputs({"output_attentions": output_attentions, "output_hidden_states": output_hidden_states})
    enc, h = apps.owner, hidden_states
    window, n0 = _window(enc.config, tuple(resolution)), h.shape[1]
    shared = enc.relative_position_bias(window, interpolate_pos_encoding=interpolate_pos_encoding, dim_size=n0) if (
        enc.has_relative_position_bias
    ) else None
    with tracked_sources() as records:
        for app in apps:
            sa = app.block.attention.attention
            own = sa.relative_position_bias if sa.has_relative_position_bias else None
            terms, pending = _terms(own, shared, window, interpolate_pos_encoding, n0, records)
            with position_terms(terms + ((pending,) if pending is not None else ())):
                h = app(h, None, pending, interpolate_pos_encoding, resolution)
    return BaseModelOutput(last_hidden_state=h) if return_dict else (h,)


def _owner(model: nn.Module, name: str) -> nn.Module | None:
    return next((m for m in model.modules() if type(m).__name__ == name), None)


def _layer_scale(lam: Tensor | float | None, x: Tensor) -> Tensor:
    return x if lam is None else lam * x


class HFBeit:
    """``BeitModel`` and its heads (classification, masked image modeling, segmentation)."""

    name = "hf-beit"
    padded = False

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        owner = _owner(model, "BeitModel")
        return None if owner is None else Applications(owner, list(owner.layers), _beit_loop)

    def default_protected(self, model: nn.Module) -> int:
        return 1  # [CLS]

    def dims(self, model: nn.Module) -> ModelDims:
        apps = self.find_layers(model)
        att = apps[0].block.attention
        return ModelDims(
            hidden=att.q_proj.in_features,
            heads=att.num_attention_heads,
            head_dim=att.head_dim,
            ffn=apps[0].block.mlp.fc1.out_features,
            layers=len(apps),
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        block, att = layer.block, layer.block.attention
        for term in reversed(_TERMS.get()):  # BeitLayer adds its own table to the mask it was given
            mask = term if mask is None else term + mask
        dropout = att.attention_dropout if att.training else 0.0
        ctx, q, k, v = run_attention(att, att.q_proj, att.k_proj, att.v_proj, block.layernorm_before(x), mask,
                                     att.head_dim, att.scaling, dropout)
        out = block.dropout(att.o_proj(ctx))
        return AttnOut(block.drop_path(_layer_scale(block.lambda_1, out)) + x, q, k, v, att.scaling)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        block = layer.block
        out = block.dropout(block.mlp(block.layernorm_after(x)))
        return block.drop_path(_layer_scale(block.lambda_2, out)) + x


class HFData2VecVision:
    """``Data2VecVisionModel`` and its heads: BEiT's blocks in the older module layout (tuples, no mask)."""

    name = "hf-data2vec-vision"
    padded = False

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        owner = _owner(model, "Data2VecVisionEncoder")
        return None if owner is None else Applications(owner, list(owner.layer), _data2vec_loop)

    def default_protected(self, model: nn.Module) -> int:
        return 1  # [CLS]

    def dims(self, model: nn.Module) -> ModelDims:
        apps = self.find_layers(model)
        sa = apps[0].block.attention.attention
        return ModelDims(
            hidden=sa.query.in_features,
            heads=sa.num_attention_heads,
            head_dim=sa.attention_head_size,
            ffn=apps[0].block.intermediate.dense.out_features,
            layers=len(apps),
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        """``Data2VecVisionSelfAttention`` (eager) or its SDPA variant op for op, with the current tokens' bias."""
        block = layer.block
        sa = block.attention.attention
        h = block.layernorm_before(x)
        shape = (*h.shape[:-1], -1, sa.attention_head_size)
        q, k, v = (proj(h).view(shape).transpose(1, 2) for proj in (sa.query, sa.key, sa.value))
        scale = 1 / math.sqrt(sa.attention_head_size)
        terms = _TERMS.get() + ((mask,) if mask is not None else ())
        if sa.config._attn_implementation == "sdpa":
            bias = None
            for term in terms:
                bias = term if bias is None else bias + term
            p = sa.config.attention_probs_dropout_prob if sa.training else 0.0
            ctx = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p, scale=scale)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(sa.attention_head_size)
            for term in terms:
                scores = scores + term
            ctx = torch.matmul(sa.dropout(nn.functional.softmax(scores, dim=-1)), v)
        ctx = ctx.permute(0, 2, 1, 3).reshape(*h.shape[:-1], sa.all_head_size)
        out = block.attention.output(ctx, h)
        return AttnOut(block.drop_path(_layer_scale(block.lambda_1, out)) + x, q, k, v, scale)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        block = layer.block
        out = block.output(block.intermediate(block.layernorm_after(x)))
        return block.drop_path(_layer_scale(block.lambda_2, out)) + x
