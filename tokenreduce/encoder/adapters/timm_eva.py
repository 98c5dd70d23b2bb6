"""timm EVA-style ViTs with rotary position embeddings: ``timm.models.eva.Eva`` (EVA, EVA-02, timm's RoPE ViTs,
ROPE-ViT, DINOv3, Perception Encoder, ...).

Supported: an ``Eva`` (or a module holding one, e.g. open_clip's ``trunk``; found by class name and module, so
this file imports without timm) whose blocks are ``EvaBlock`` (pre-norm, LayerScale ``gamma_1``/``gamma_2`` or
none) or ``EvaBlockPostNorm``, with ``EvaAttention`` (fused qkv with separate q/v biases, or separate
projections; qk-norm, inner scale norm, sigmoid gate, SDPA or explicit softmax) or timm's ``AttentionRope``
without grouped-query heads; any MLP (``Mlp``, ``GluMlp``, ``SwiGLU``) and any RoPE table ``Eva`` builds
(``cat`` as in EVA-02, per-depth ``mixed``, ``dinov3``, ``mrope``) or none (EVA-01). Protected tokens are
``num_prefix_tokens`` ([CLS] + register tokens, whichever the model has).

RoPE positions of reduced tokens (the rule of ``positions.py``, as BEiT's relative bias in ``hf_beit.py``):
every token keeps one position, that of its group's *representative*, the earliest original token in it.
A kept (or pruned-around) token keeps its own 2-D angle; a merged token takes its representative's angle;
a token whose representative is a prefix token ([CLS], registers) is not rotated, as in the model. The
model's RoPE table, built once per forward for the image's patch grid, is gathered per row at the
representatives' patch indices, which is exactly the table timm would give tokens at those positions.

How: like BEiT, blocks are patched as applications (``applications.py``). While patched, ``Eva``'s
``forward_features`` (which ``forward`` calls) is replaced by the loop below, which runs the model's own
embedding, hands every block its RoPE table and the current tokens' positions, and applies the final norm.
An unpatched or not-yet-reduced block runs its own forward with the model's table, so nothing changes
until the first reduction.

Limits: ``attn_mask`` / ``is_causal`` are refused while patched (reduced blocks have new token counts);
``forward_intermediates`` runs unreduced (it loops over the blocks itself); gradient checkpointing is not
applied inside the patched loop; scorers that rebuild attention rows from queries and keys (EViT's [CLS]
attention) see the rotated queries and keys, as the model does; the FLOP model does not count the gate
projection of gated attention; under ``torch.compile`` the patched loop runs eagerly (positions come from
source records, kept only outside compiled code).

Paper: Fang et al., "EVA-02: A Visual Representation for Neon Genesis", 2023 (RoPE in a ViT: Heo et al.,
"Rotary Position Embedding for Vision Transformer", ECCV 2024).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .applications import Application, Applications
from .base import AttnOut, ModelDims
from .positions import representatives, tracked_sources
from .timm_vit import mlp_dims

_EVA_MODULE = "timm.models.eva"
_BLOCKS = ("EvaBlock", "EvaBlockPostNorm")
_ATTENTIONS = {"EvaAttention": _EVA_MODULE, "AttentionRope": "timm.layers.attention"}
_SUPPORTED = (
    "tokenreduce supports timm Eva models whose blocks are EvaBlock or EvaBlockPostNorm with EvaAttention "
    "or AttentionRope (no grouped-query heads)"
)

# (the RoPE table timm hands the block being run, as timm hands it; each slot's original position (B, n) or
# None while the tokens are the original ones)
_ROPE: ContextVar[tuple[Tensor | None, Tensor | None]] = ContextVar("tokenreduce_eva_rope", default=(None, None))


@contextmanager
def block_rope(rope: Tensor | None, positions: Tensor | None) -> Iterator[None]:
    """Make ``rope`` (timm's table for the original patches) and the current slots' original ``positions``
    (None: the slots are the original tokens) what the block run inside rotates its queries and keys by."""
    token = _ROPE.set((rope, positions))
    try:
        yield
    finally:
        _ROPE.reset(token)


def _is(obj: object, name: str, module: str) -> bool:
    cls = type(obj)
    return cls.__name__ == name and cls.__module__ == module


def _owner(model: nn.Module) -> nn.Module | None:
    """The timm Eva inside ``model`` (the model itself first), or None."""
    for mod in model.modules():
        if _is(mod, "Eva", _EVA_MODULE) and isinstance(getattr(mod, "blocks", None), nn.ModuleList):
            return mod
    return None


def _check_block(block: nn.Module) -> None:
    if not any(_is(block, name, _EVA_MODULE) for name in _BLOCKS):
        raise TypeError(f"unsupported timm block {type(block).__module__}.{type(block).__name__}: {_SUPPORTED}")
    att = block.attn
    if not any(_is(att, name, module) for name, module in _ATTENTIONS.items()):
        raise TypeError(f"unsupported attention {type(att).__module__}.{type(att).__name__} in {type(block).__name__}: "
                        f"{_SUPPORTED}")
    if getattr(att, "num_kv_groups", 1) != 1:
        raise TypeError(f"unsupported grouped-query attention in {type(block).__name__} ({att.num_heads} query heads, "
                        f"{att.num_kv_heads} key/value heads): {_SUPPORTED}")


class _EvaApplication(Application):
    """One EVA block; unpatched (or before any reduction) it runs the block's own forward with the RoPE table
    the loop set."""

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        rope, _ = _ROPE.get()
        return self.block(x, rope=rope, attn_mask=mask)


class _EvaStack(Applications):
    entry = "forward_features"
    application = _EvaApplication


@torch.compiler.disable
def _eva_features(apps: _EvaStack, x: Tensor, attn_mask: Tensor | None = None, is_causal: bool = False) -> Tensor:
    """``Eva.forward_features`` with one (patched) application per block and RoPE positions that follow merges.

    Never compiled: positions come from the source records, which the runner keeps only outside
    ``torch.compile``, so a compiled patched model runs this loop eagerly (correct, not faster)."""
    if attn_mask is not None or is_causal:
        raise ValueError("tokenreduce: attn_mask / is_causal are not available on a patched timm Eva model")
    model = apps.owner
    x = model.patch_embed(x)
    x, rope = model._pos_embed(x)
    x = model.norm_pre(x)
    per_depth = getattr(model, "rope_mixed", False) and rope is not None  # (depth, ...) tables, one per block
    with tracked_sources() as records:
        for app in apps:
            pos = representatives(records[-1].src, records[-1].sizes.shape[1]) if records else None
            with block_rope(rope[app.depth] if per_depth else rope, pos):
                x = app(x)
    return model.norm(x)


def _qkv(att: nn.Module, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Queries, keys, values (B, H, N, d) as ``EvaAttention`` / ``AttentionRope`` project them."""
    b, n, _ = h.shape
    if att.qkv is None:
        projs = (att.q_proj, att.k_proj, att.v_proj)
        return tuple(p(h).reshape(b, n, att.num_heads, -1).transpose(1, 2) for p in projs)
    q_bias = getattr(att, "q_bias", None)  # EvaAttention: k has no bias, q/v biases kept apart
    if q_bias is None:
        qkv = att.qkv(h)
    else:
        bias = torch.cat((q_bias, att.k_bias, att.v_bias))
        if getattr(att, "qkv_bias_separate", False):
            qkv = att.qkv(h)
            qkv += bias
        else:
            qkv = F.linear(h, weight=att.qkv.weight, bias=bias)
    return qkv.reshape(b, n, 3, att.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)


def _rope_at(rope: Tensor, patches: Tensor) -> Tensor:
    """timm's RoPE table (``(N, 2d)``, ``(H, N, 2d)`` or with a batch ``(B, 1|H, N, 2d)``) at each row's patch
    indices ``patches`` (B, n): (B, 1|H, n, 2d)."""
    while rope.dim() < 4:
        rope = rope.unsqueeze(0)
    b, n = patches.shape
    rope = rope.expand(b, *rope.shape[1:])
    idx = patches[:, None, :, None].expand(b, rope.shape[1], n, rope.shape[-1])
    return rope.gather(2, idx)


def _rotate(att: nn.Module, q: Tensor, k: Tensor, v: Tensor, rope: Tensor, pos: Tensor | None) -> tuple[Tensor, Tensor]:
    """Apply RoPE as the block does: the original tokens with timm's op (its prefix tokens unrotated), reduced
    tokens at their representatives' positions (a prefix representative: not rotated)."""
    from timm.layers import apply_rot_embed_cat

    npt, half = att.num_prefix_tokens, getattr(att, "rotate_half", False)
    if pos is None:
        def rot(t: Tensor) -> Tensor:
            return torch.cat([t[:, :, :npt], apply_rot_embed_cat(t[:, :, npt:], rope, half=half)], dim=2).type_as(v)
        return rot(q), rot(k)
    table = _rope_at(rope, (pos - npt).clamp(min=0))
    patch = (pos >= npt)[:, None, :, None]

    def rot_at(t: Tensor) -> Tensor:
        return torch.where(patch, apply_rot_embed_cat(t, table, half=half), t).type_as(v)

    return rot_at(q), rot_at(k)


class TimmEva:
    name = "timm-eva"
    padded = False

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        owner = _owner(model)
        if owner is None or len(owner.blocks) == 0:
            return None
        for block in owner.blocks:
            _check_block(block)
        return _EvaStack(owner, list(owner.blocks), _eva_features)

    def default_protected(self, model: nn.Module) -> int:
        return int(_owner(model).num_prefix_tokens)

    def dims(self, model: nn.Module) -> ModelDims:
        owner = _owner(model)
        att = owner.blocks[0].attn
        ffn, matrices = mlp_dims(owner.blocks[0].mlp)
        return ModelDims(hidden=owner.embed_dim, heads=att.num_heads, head_dim=att.head_dim, ffn=ffn,
                         layers=len(owner.blocks), ffn_matrices=matrices)

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        """The block's attention half in timm's op order, queries and keys rotated at the tokens' positions."""
        block = layer.block
        att, post = block.attn, _is(block, "EvaBlockPostNorm", _EVA_MODULE)
        h = x if post else block.norm1(x)
        b, n, _ = h.shape
        gate = att.gate(h).sigmoid() if att.gate is not None else None
        q, k, v = _qkv(att, h)
        q, k = att.q_norm(q), att.k_norm(k)
        rope, pos = _ROPE.get()
        if rope is not None:
            q, k = _rotate(att, q, k, v, rope, pos)
        if att.fused_attn:
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                               dropout_p=att.attn_drop.p if att.training else 0.0)
        else:
            logits = (q * att.scale) @ k.transpose(-2, -1)
            if mask is not None:
                if mask.dtype == torch.bool:  # as timm's resolve_self_attn_mask
                    mask = torch.zeros_like(mask, dtype=logits.dtype).masked_fill_(~mask, float("-inf"))
                logits = logits + mask
            o = att.attn_drop(logits.softmax(dim=-1)) @ v
        o = att.norm(o.transpose(1, 2).reshape(b, n, att.num_heads * att.head_dim))
        if gate is not None:
            o = o * gate
        o = att.proj_drop(att.proj(o))
        if post:
            out = x + block.drop_path1(block.norm1(o))
        else:
            out = x + block.drop_path1(o if block.gamma_1 is None else block.gamma_1 * o)
        return AttnOut(out, q, k, v, att.scale)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        block = layer.block
        if _is(block, "EvaBlockPostNorm", _EVA_MODULE):
            return x + block.drop_path2(block.norm2(block.mlp(x)))
        o = block.mlp(block.norm2(x))
        return x + block.drop_path2(o if block.gamma_2 is None else block.gamma_2 * o)
