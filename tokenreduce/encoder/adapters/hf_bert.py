"""Hugging Face BERT-family encoders (BERT, RoBERTa, XLM-R, ...: the post-LN BertLayer shape).

Includes sentence-transformers models such as all-MiniLM-L6-v2, which wrap a BertModel.
Reduction sits between the attention sub-layer and the feed-forward sub-layer of each block.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import AttnOut, ModelDims, module_list_of
from .hf_attention import run_attention

LAYER_CLASSES = {"BertLayer", "RobertaLayer", "XLMRobertaLayer", "CamembertLayer", "ElectraLayer"}


class HFBert:
    name = "hf-bert"
    padded = True

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        return module_list_of(model, LAYER_CLASSES)

    def default_protected(self, model: nn.Module) -> int:
        return 1  # [CLS] / <s>

    def dims(self, model: nn.Module) -> ModelDims:
        layer = self.find_layers(model)[0]
        sa = layer.attention.self
        return ModelDims(
            hidden=sa.query.in_features,
            heads=sa.num_attention_heads,
            head_dim=sa.attention_head_size,
            ffn=layer.intermediate.dense.out_features,
            layers=len(self.find_layers(model)),
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        if getattr(layer, "is_decoder", False):
            raise TypeError("token reduction supports BERT-family encoders, not decoder configurations")
        sa = layer.attention.self
        ctx, q, k, v = run_attention(
            sa, sa.query, sa.key, sa.value, x, mask, sa.attention_head_size, sa.scaling, sa.dropout.p
        )
        return AttnOut(layer.attention.output(ctx, x), q, k, v, sa.scaling)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer.feed_forward_chunk(x)
