"""timm Vision Transformers: ``VisionTransformer`` and its subclasses (ViT, DeiT, DeiT III, hybrid ViTs, ...).

Supported: any timm model (or a wrapper holding one, e.g. ``model.trunk``) that is a
``timm.models.vision_transformer.VisionTransformer`` (by class name and module, so this file imports
without timm) whose ``blocks`` are all the pre-norm ``timm.models.vision_transformer.Block``::

    x = x + drop_path1(ls1(attn(norm1(x))))
    x = x + drop_path2(ls2(mlp(norm2(x))))

with timm's standard ``Attention`` (fused ``qkv``; optional qk-norm ``q_norm``/``k_norm``, output norm
``norm`` (``scale_attn_norm``), sigmoid ``gate``, ``fused_attn`` on (SDPA) or off (explicit softmax)),
LayerScale or not, any MLP (``Mlp``, ``SwiGLU``, ``SwiGLUPacked``/``GluMlp``). That covers vit_*, deit_*
(distilled: two prefix tokens), deit3_* (LayerScale, ``no_embed_class``), register-token ViTs, qk-norm
ViTs. The block's own submodules are called in timm's own op order, so a split block equals the
block's forward bit for bit. Protected tokens are ``num_prefix_tokens`` ([CLS] + distillation +
register tokens, whichever the model has); ``no_embed_class`` only changes position embeddings, not
the sequence, so it needs nothing.

EVA / EVA-02 and timm's other RoPE ViTs (``timm.models.eva.Eva``) have their own adapter, ``timm_eva.py``.

Not supported (``TypeError`` naming the class): other blocks inside a VisionTransformer
(``ResPostBlock``, ``ParallelScalingBlock``, ``ParallelThingsBlock``, ``DiffParallelScalingBlock``,
custom ``block_fn``) and other attentions (``DiffAttention``, ``AttentionRope``). Models that are not
VisionTransformers (BEiT's relative position bias, CaiT's talking heads,
NaFlexViT's padding masks, PiT, CrossViT, MobileViT) are not found at all (``find_layers`` returns None).

Caveat: the FLOP model (``encoder.cost``) does not count the ``gate`` projection of gated attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import AttnOut, ModelDims

_VIT_MODULE = "timm.models.vision_transformer"
_UNSUPPORTED_MSG = "tokenreduce supports timm VisionTransformer blocks of class Block with timm's standard Attention"


def _from_timm(obj: object, name: str, module: str | None = None) -> bool:
    cls = type(obj)
    return cls.__name__ == name and (cls.__module__ == module if module else cls.__module__.startswith("timm."))


def _is_timm_vit(mod: nn.Module) -> bool:
    return any(c.__name__ == "VisionTransformer" and c.__module__ == _VIT_MODULE for c in type(mod).__mro__)


def _owner(model: nn.Module) -> nn.Module | None:
    """The timm VisionTransformer inside ``model`` (the model itself first), or None."""
    for mod in model.modules():
        if _is_timm_vit(mod) and isinstance(getattr(mod, "blocks", None), (nn.Sequential, nn.ModuleList)):
            return mod
    return None


def mlp_dims(mlp: nn.Module) -> tuple[int, int]:
    """(hidden width, weight matrices) of a timm MLP: ``Mlp`` 2; ``SwiGLU``, ``GluMlp`` / ``SwiGLUPacked`` 3."""
    fc2 = getattr(mlp, "fc2", None)
    if not isinstance(fc2, nn.Linear):
        raise TypeError(f"tokenreduce: cannot size timm MLP {type(mlp).__name__} (no Linear fc2)")
    fc1 = getattr(mlp, "fc1", None)
    gated = hasattr(mlp, "fc1_g") or (isinstance(fc1, nn.Linear) and fc1.out_features == 2 * fc2.in_features)
    return fc2.in_features, 3 if gated else 2


def _check_block(block: nn.Module) -> None:
    if not _from_timm(block, "Block", _VIT_MODULE):
        raise TypeError(
            f"unsupported timm block {type(block).__module__}.{type(block).__name__}: {_UNSUPPORTED_MSG} "
            f"(pre-norm x + ls1(attn(norm1(x))), x + ls2(mlp(norm2(x))))"
        )
    if not _from_timm(block.attn, "Attention"):
        raise TypeError(
            f"unsupported attention {type(block.attn).__module__}.{type(block.attn).__name__} in timm Block: "
            f"{_UNSUPPORTED_MSG}"
        )


class TimmViT:
    name = "timm-vit"
    padded = False

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        owner = _owner(model)
        if owner is None or len(owner.blocks) == 0:
            return None
        for block in owner.blocks:
            _check_block(block)
        return owner.blocks  # an nn.Sequential in timm: indexable and iterable like a ModuleList

    def default_protected(self, model: nn.Module) -> int:
        owner = _owner(model)
        return int(getattr(owner, "num_prefix_tokens", 1))

    def dims(self, model: nn.Module) -> ModelDims:
        layers = self.find_layers(model)
        att = layers[0].attn
        ffn, matrices = mlp_dims(layers[0].mlp)
        return ModelDims(
            hidden=att.qkv.in_features,
            heads=att.num_heads,
            head_dim=att.head_dim,
            ffn=ffn,
            layers=len(layers),
            ffn_matrices=matrices,
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        """``x + drop_path1(ls1(attn(norm1(x))))`` with timm ``Attention.forward``'s op order, plus q, k."""
        att = layer.attn
        h = layer.norm1(x)
        b, n, _ = h.shape
        gate_proj = getattr(att, "gate", None)
        gate = gate_proj(h).sigmoid() if gate_proj is not None else None
        qkv = att.qkv(h).reshape(b, n, 3, att.num_heads, att.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        q, k = att.q_norm(q), att.k_norm(k)
        if att.fused_attn:
            o = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, dropout_p=att.attn_drop.p if att.training else 0.0
            )
        else:
            logits = (q * att.scale) @ k.transpose(-2, -1)
            if mask is not None:
                if mask.dtype == torch.bool:  # as timm's resolve_self_attn_mask
                    mask = torch.zeros_like(mask, dtype=logits.dtype).masked_fill_(~mask, float("-inf"))
                logits = logits + mask
            o = att.attn_drop(logits.softmax(dim=-1)) @ v
        o = o.transpose(1, 2).reshape(b, n, getattr(att, "attn_dim", att.num_heads * att.head_dim))
        norm = getattr(att, "norm", None)
        if norm is not None:
            o = norm(o)
        if gate is not None:
            o = o * gate
        o = att.proj_drop(att.proj(o))
        return AttnOut(x + layer.drop_path1(layer.ls1(o)), q, k, v, att.scale)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        return x + layer.drop_path2(layer.ls2(layer.mlp(layer.norm2(x))))
