"""Hugging Face DeBERTa-v2 and v3 (``DebertaV2Model`` and its heads): disentangled relative attention.

Block (post-LN, BERT-shaped): ``a = output(attn(x), x)``; ``output(intermediate(a), a)``. The attention
logits add content-to-position (c2p) and position-to-content (p2c) terms indexed by the bucketed
relative position of each (query, key) pair, which ``DebertaV2Encoder`` builds once per forward for
positions ``0..N-1``. Blocks take that table, a (B, 1, N, N) mask and return tuples, so they are
patched as applications (``applications.py``); while patched, ``DebertaV2Encoder.forward`` runs the loop
below.

Positions of reduced tokens (``positions.py``): each token keeps the position of its group's
representative, the earliest original token merged into it. Before each block the loop gathers the
encoder's relative-position table at those positions, ``rel[b, i, j] = full[rep[b, i], rep[b, j]]``
(= DeBERTa's bucket of ``rep[i] - rep[j]``), and both disentangled terms read their position embeddings
through it, per row. The reduced attention below is ``DisentangledSelfAttention`` op for op, with that
per-row table (the library's gathers assume one table for the whole batch).

Cost: the position terms are matmuls too; ``relative_cost(model)`` gives them to ``encoder_cost``.

Refused: ``conv_kernel_size > 0`` (DeBERTa-v2 xlarge/xxlarge: a convolution over the sequence after
block 0 mixes neighbouring positions, which reduced tokens no longer have), ``z_steps > 1`` (re-runs
the last block on the full-length states), ``output_attentions`` while patched. Under ``torch.compile``
the patched loop runs eagerly (positions follow merges through source records): correct, not faster.
Scorers that rebuild attention rows from queries and keys (EViT's [CLS] attention) see the
content-to-content logits only, without the position terms.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from ..cost import RelativePositionCost
from .applications import Applications
from .base import AttnOut, ModelDims
from .positions import gather_pairs, representatives, tracked_sources

# (relative positions (1 or B, n, n), relative embedding table) for the block being run
_POSITIONS: ContextVar[tuple[Tensor | None, Tensor | None]] = ContextVar(
    "tokenreduce_deberta_positions", default=(None, None)
)


def _owner(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if type(m).__name__ == "DebertaV2Encoder"), None)


def _check(model: nn.Module, owner: nn.Module) -> None:
    if owner.conv is not None:
        raise TypeError(
            f"unsupported model {type(model).__name__}: this DeBERTa-v2 configuration (conv_kernel_size > 0, the "
            "xlarge/xxlarge models) runs a convolution over neighbouring sequence positions after block 0, which "
            "reduced tokens no longer have; DeBERTa-v2/v3 models without the convolution (v3 base/large/small/xsmall, "
            "mDeBERTa-v3) are supported"
        )
    deberta = next((m for m in model.modules() if type(m).__name__ == "DebertaV2Model"), None)
    if deberta is not None and getattr(deberta, "z_steps", 0) > 1:
        raise TypeError(f"unsupported model {type(model).__name__}: z_steps > 1 re-runs the last block at full length")


@contextmanager
def relative_positions(rel: Tensor | None, rel_embeddings: Tensor | None) -> Iterator[None]:
    """Make ``rel`` (1 or B, n, n) and the relative embedding table those :meth:`HFDebertaV2.attention` uses."""
    token = _POSITIONS.set((rel, rel_embeddings))
    try:
        yield
    finally:
        _POSITIONS.reset(token)


@torch.compiler.disable  # positions follow merges through source records, kept only in eager code
def _loop(
    apps: Applications,
    hidden_states: Tensor,
    attention_mask: Tensor,
    output_hidden_states: bool = True,
    output_attentions: bool = False,
    query_states: Tensor | None = None,
    relative_pos: Tensor | None = None,
    return_dict: bool = True,
):
    """``DebertaV2Encoder.forward`` with one (patched) application per block and positions that follow merges."""
    if output_attentions:
        raise ValueError("tokenreduce: output_attentions is not available on a patched DeBERTa-v2")
    if query_states is not None or relative_pos is not None:
        raise ValueError("tokenreduce: a patched DeBERTa-v2 encoder takes no query_states or relative_pos")
    enc = apps.owner
    mask = enc.get_attention_mask(attention_mask).bool()  # the block applies .bool() itself: same values
    full = enc.get_rel_pos(hidden_states)  # (1, N, N) bucketed relative positions, or None
    rel_embeddings = enc.get_rel_embedding()
    h, states = hidden_states, [hidden_states]
    with tracked_sources() as records:
        for app in apps:
            rel = (
                full
                if full is None or not records
                else gather_pairs(full, representatives(records[-1].src, h.shape[1]))
            )
            with relative_positions(rel, rel_embeddings):
                h = app(h, mask, relative_pos=rel, rel_embeddings=rel_embeddings)
            states.append(h)
    all_states = tuple(states) if output_hidden_states else None
    if not return_dict:
        return tuple(v for v in (h, all_states) if v is not None)
    return BaseModelOutput(last_hidden_state=h, hidden_states=all_states)


def _disentangled_bias(sa: nn.Module, q: Tensor, k: Tensor, rel: Tensor, rel_embeddings: Tensor, factor: int) -> Tensor:
    """c2p + p2c logits (B*H, n, n) as ``DisentangledSelfAttention.disentangled_attention_bias``, for a relative
    position table with one (n, n) slice per row."""
    heads, span = sa.num_attention_heads, sa.pos_ebd_size
    rows = q.size(0) // heads
    rel = rel.to(device=q.device, dtype=torch.long).expand(rows, -1, -1)
    rel = rel[:, None].expand(-1, heads, -1, -1).reshape(q.size(0), rel.size(-2), rel.size(-1))
    emb = rel_embeddings[0 : span * 2, :].unsqueeze(0)
    types = sa.pos_att_type
    if sa.share_att_key:
        pos_q = sa.transpose_for_scores(sa.query_proj(emb), heads).repeat(rows, 1, 1)
        pos_k = sa.transpose_for_scores(sa.key_proj(emb), heads).repeat(rows, 1, 1)
    else:
        pos_k = sa.transpose_for_scores(sa.pos_key_proj(emb), heads).repeat(rows, 1, 1) if "c2p" in types else None
        pos_q = sa.transpose_for_scores(sa.pos_query_proj(emb), heads).repeat(rows, 1, 1) if "p2c" in types else None
    score = 0
    if "c2p" in types:
        scale = torch.sqrt(torch.tensor(pos_k.size(-1), dtype=torch.float, device=q.device) * factor)
        c2p = torch.gather(
            torch.bmm(q, pos_k.transpose(-1, -2)), dim=-1, index=torch.clamp(rel + span, 0, span * 2 - 1)
        )
        score += c2p / scale.to(dtype=c2p.dtype)
    if "p2c" in types:
        scale = torch.sqrt(torch.tensor(pos_q.size(-1), dtype=torch.float, device=q.device) * factor)
        p2c = torch.bmm(k, pos_q.transpose(-1, -2))
        p2c = torch.gather(p2c, dim=-1, index=torch.clamp(-rel + span, 0, span * 2 - 1)).transpose(-1, -2)
        score += p2c / scale.to(dtype=p2c.dtype)
    return score


class HFDebertaV2:
    name = "hf-deberta-v2"
    padded = True

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        owner = _owner(model)
        if owner is None:
            return None
        _check(model, owner)
        return Applications(owner, list(owner.layer), _loop)

    def default_protected(self, model: nn.Module) -> int:
        return 1  # [CLS]

    def dims(self, model: nn.Module) -> ModelDims:
        apps = self.find_layers(model)
        sa = apps[0].block.attention.self
        return ModelDims(
            hidden=sa.query_proj.in_features,
            heads=sa.num_attention_heads,
            head_dim=sa.attention_head_size,
            ffn=apps[0].block.intermediate.dense.out_features,
            layers=len(apps),
        )

    def relative_cost(self, model: nn.Module) -> RelativePositionCost | None:
        """The disentangled position terms' matmuls per layer, for ``encoder_cost(..., relative=...)``."""
        sa = self.find_layers(model)[0].block.attention.self
        if not sa.relative_attention:
            return None
        terms = sum(t in sa.pos_att_type for t in ("c2p", "p2c"))
        return RelativePositionCost(
            positions=2 * sa.pos_ebd_size, projections=2 if sa.share_att_key else terms, terms=terms
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        """``DebertaV2Attention`` op for op, with the relative positions of the current tokens."""
        att = layer.block.attention
        sa = att.self
        heads, n = sa.num_attention_heads, x.shape[1]
        q = sa.transpose_for_scores(sa.query_proj(x), heads)  # (B*H, n, d)
        k = sa.transpose_for_scores(sa.key_proj(x), heads)
        v = sa.transpose_for_scores(sa.value_proj(x), heads)
        factor = 1 + sum(t in sa.pos_att_type for t in ("c2p", "p2c"))
        scale = torch.sqrt(torch.tensor(q.size(-1), dtype=torch.float, device=q.device) * factor)
        scores = torch.bmm(q, k.transpose(-1, -2) / scale.to(dtype=q.dtype))
        if sa.relative_attention:
            rel, rel_embeddings = _POSITIONS.get()
            scores = scores + _disentangled_bias(sa, q, k, rel, sa.pos_dropout(rel_embeddings), factor)
        scores = scores.view(-1, heads, n, n)
        if mask is not None and not mask.is_floating_point():  # the model's own 0/1 mask (first reducing block)
            scores = scores.masked_fill(~mask.bool(), torch.finfo(q.dtype).min)
        elif mask is not None:  # the runner's additive bias: padding, log(size)
            scores = scores + mask
        probs = sa.dropout(nn.functional.softmax(scores, dim=-1))
        ctx = torch.bmm(probs.view(-1, n, n), v)
        ctx = ctx.view(-1, heads, n, ctx.size(-1)).permute(0, 2, 1, 3).contiguous().view(x.shape[0], n, -1)
        b, d = x.shape[0], q.size(-1)
        return AttnOut(
            att.output(ctx, x),
            q.view(b, heads, n, d),
            k.view(b, heads, n, d),
            v.view(b, heads, n, d),
            float(scale) ** -1,
        )

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        block = layer.block
        return block.output(block.intermediate(x), x)
