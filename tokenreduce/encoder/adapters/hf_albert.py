"""Hugging Face ALBERT (``AlbertModel`` and its heads): one layer's weights shared across depth.

``AlbertTransformer`` projects the embeddings (``embedding_hidden_mapping_in``), then applies layer
group ``int(i / (L / G))`` at depth ``i`` (each group runs its ``inner_group_num`` layers); usually one
group of one layer, so a single ``AlbertLayer`` runs at every depth. Patching is therefore per
*application*, not per module (``applications.py``): the block list holds one proxy per call, each
depth reduces with its own budget, and the shared weights are never touched.

Block (post-LN): ``a = attention.LayerNorm(x + dense(attn(x)))``; ``full_layer_layer_norm(ffn(a) + a)``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor, nn
from transformers.modeling_outputs import BaseModelOutput

from .applications import Applications
from .base import AttnOut, ModelDims
from .hf_attention import run_attention


def _owner(model: nn.Module) -> nn.Module | None:
    return next((m for m in model.modules() if type(m).__name__ == "AlbertTransformer"), None)


def _blocks(owner: nn.Module) -> list[nn.Module]:
    """The AlbertLayer run at each depth, in call order (the same module repeats when weights are shared)."""
    n, groups = owner.config.num_hidden_layers, owner.config.num_hidden_groups
    out = []
    for i in range(n):
        out.extend(owner.albert_layer_groups[int(i / (n / groups))].albert_layers)
    return out


def _loop(apps: Applications, hidden_states: Tensor, attention_mask: Tensor | None = None, **kwargs: Any):
    """``AlbertTransformer.forward`` with one (patched) application per depth."""
    h = apps.owner.embedding_hidden_mapping_in(hidden_states)
    for app in apps:
        h = app(h, attention_mask, **kwargs)
    return BaseModelOutput(last_hidden_state=h)


class HFAlbert:
    name = "hf-albert"
    padded = True

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        owner = _owner(model)
        return None if owner is None else Applications(owner, _blocks(owner), _loop)

    def default_protected(self, model: nn.Module) -> int:
        return 1  # [CLS]

    def dims(self, model: nn.Module) -> ModelDims:
        apps = self.find_layers(model)
        layer = apps[0].block
        att = layer.attention
        return ModelDims(
            hidden=att.query.in_features,
            heads=att.num_attention_heads,
            head_dim=att.attention_head_size,
            ffn=layer.ffn.out_features,
            layers=len(apps),  # applications: shared weights cost their MACs at every depth
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        att = layer.block.attention
        ctx, q, k, v = run_attention(
            att, att.query, att.key, att.value, x, mask, att.attention_head_size, att.scaling, att.attention_dropout.p
        )
        return AttnOut(att.LayerNorm(x + att.output_dropout(att.dense(ctx))), q, k, v, att.scaling)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        block = layer.block
        return block.full_layer_layer_norm(block.ff_chunk(x) + x)
