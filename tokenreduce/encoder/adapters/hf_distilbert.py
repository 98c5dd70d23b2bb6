"""Hugging Face DistilBERT (``DistilBertModel`` and its task heads; sentence-transformers models that wrap it).

Block (post-LN): ``a = sa_layer_norm(attention(x) + x)``; ``out = output_layer_norm(ffn(a) + a)``.
Reduction sits between the two. DistilBERT's block class is called ``TransformerBlock``, a name other
libraries use too, so blocks are recognised by class name *and* module.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import AttnOut, ModelDims
from .hf_attention import run_attention

_MODULE = "transformers.models.distilbert.modeling_distilbert"


def _is_block(mod: nn.Module) -> bool:
    return type(mod).__name__ == "TransformerBlock" and type(mod).__module__ == _MODULE


class HFDistilBert:
    name = "hf-distilbert"
    padded = True

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        for mod in model.modules():
            if isinstance(mod, nn.ModuleList) and len(mod) and all(_is_block(c) for c in mod):
                return mod
        return None

    def default_protected(self, model: nn.Module) -> int:
        return 1  # [CLS]

    def dims(self, model: nn.Module) -> ModelDims:
        layers = self.find_layers(model)
        att = layers[0].attention
        return ModelDims(
            hidden=att.q_lin.in_features,
            heads=att.n_heads,
            head_dim=att.attention_head_size,
            ffn=layers[0].ffn.lin1.out_features,
            layers=len(layers),
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        att = layer.attention
        ctx, q, k, v = run_attention(
            att, att.q_lin, att.k_lin, att.v_lin, x, mask, att.attention_head_size, att.scaling, att.dropout.p
        )
        return AttnOut(layer.sa_layer_norm(att.out_lin(ctx) + x), q, k, v, att.scaling)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer.output_layer_norm(layer.ffn(x) + x)
