"""Hugging Face DINOv2, with or without register tokens (``Dinov2Model``, ``Dinov2WithRegistersModel``
and their image classifiers).

Block = x + drop_path(ls1(attn(norm1(x)))); x + drop_path(ls2(mlp(norm2(x)))), with LayerScale and a
plain or SwiGLU MLP. Protected tokens: [CLS] plus the register tokens that follow it.

``Dinov2Backbone`` (and its registers twin) is refused: it reshapes every chosen layer's output into a
full-resolution feature map, which a reduced layer no longer has.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import AttnOut, ModelDims, module_list_of
from .hf_attention import run_self_attention

LAYERS = {"Dinov2Layer", "Dinov2WithRegistersLayer"}
BACKBONES = {"Dinov2Backbone", "Dinov2WithRegistersBackbone"}


def _registers(model: nn.Module) -> int:
    for m in model.modules():
        tokens = getattr(m, "register_tokens", None)
        if type(m).__name__.startswith("Dinov2") and isinstance(tokens, nn.Parameter):
            return int(tokens.shape[1])
    return 0


class HFDinov2:
    name = "hf-dinov2"
    padded = True  # the model accepts a token attention mask (masked patches are padding)

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        layers = module_list_of(model, LAYERS)
        if layers is not None and any(type(m).__name__ in BACKBONES for m in model.modules()):
            raise TypeError(
                f"{type(model).__name__}: DINOv2 backbones return full-resolution feature maps of intermediate "
                "layers, which token reduction shortens; patch Dinov2Model (or the classifier) instead"
            )
        return layers

    def default_protected(self, model: nn.Module) -> int:
        return 1 + _registers(model)  # [CLS] + register tokens

    def dims(self, model: nn.Module) -> ModelDims:
        layers = self.find_layers(model)
        att, mlp = layers[0].attention, layers[0].mlp
        gated = hasattr(mlp, "down_proj")  # Dinov2SwiGLUFFN: gate_proj, up_proj, down_proj
        return ModelDims(
            hidden=att.q_proj.in_features,
            heads=att.num_attention_heads,
            head_dim=att.head_dim,
            ffn=mlp.down_proj.in_features if gated else mlp.fc1.out_features,
            layers=len(layers),
            ffn_matrices=3 if gated else 2,
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        att = layer.attention
        ctx, q, k, v = run_self_attention(att, layer.norm1(x), mask)
        return AttnOut(layer.drop_path(layer.layer_scale1(att.o_proj(ctx))) + x, q, k, v, att.scaling)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer.drop_path(layer.layer_scale2(layer.mlp(layer.norm2(x)))) + x
