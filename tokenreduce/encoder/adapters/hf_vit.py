"""Hugging Face pre-LN vision encoders: ViT, DeiT (two prefix tokens), ViT-MAE and the CLIP vision tower.

Block = x + attn(ln1(x)); x + mlp(ln2(x)). Reduction sits between the two residual branches.
In a full CLIPModel only the vision tower is patched (the text tower is causal).
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import AttnOut, ModelDims, module_list_of
from .hf_attention import run_attention, run_self_attention

VIT_LAYERS = {"ViTLayer", "DeiTLayer", "ViTMAELayer"}  # MAE: the encoder stack (found before its decoder's)
CLIP_LAYERS = {"CLIPEncoderLayer"}


def _is_deit(model: nn.Module) -> bool:
    return any(
        type(m).__name__ == "DeiTEmbeddings" and getattr(m, "distillation_token", None) is not None
        for m in model.modules()
    )


class HFViT:
    name = "hf-vit"
    padded = False

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        return module_list_of(model, VIT_LAYERS)

    def default_protected(self, model: nn.Module) -> int:
        return 2 if _is_deit(model) else 1  # [CLS] (+ distillation token)

    def dims(self, model: nn.Module) -> ModelDims:
        layers = self.find_layers(model)
        att = layers[0].attention
        return ModelDims(
            hidden=att.q_proj.in_features,
            heads=att.num_attention_heads,
            head_dim=att.head_dim,
            ffn=layers[0].mlp.fc1.out_features,
            layers=len(layers),
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        att = layer.attention
        ctx, q, k, v = run_self_attention(att, layer.layernorm_before(x), mask)
        return AttnOut(layer.dropout(att.o_proj(ctx)) + x, q, k, v, att.scaling)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        return layer.dropout(layer.mlp(layer.layernorm_after(x))) + x


class HFCLIPVision:
    name = "hf-clip-vision"
    padded = False

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        layers = module_list_of(model, CLIP_LAYERS, prefer="vision")
        if layers is None:
            return None
        is_vision = any(type(m).__name__ == "CLIPVisionEmbeddings" for m in model.modules())
        return layers if is_vision else None

    def default_protected(self, model: nn.Module) -> int:
        return 1

    def dims(self, model: nn.Module) -> ModelDims:
        layers = self.find_layers(model)
        att = layers[0].self_attn
        return ModelDims(
            hidden=att.embed_dim,
            heads=att.num_heads,
            head_dim=att.head_dim,
            ffn=layers[0].mlp.fc1.out_features,
            layers=len(layers),
        )

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut:
        att = layer.self_attn
        ctx, q, k, v = run_attention(
            att, att.q_proj, att.k_proj, att.v_proj, layer.layer_norm1(x), mask, att.head_dim, att.scale, att.dropout
        )
        return AttnOut(x + att.out_proj(ctx), q, k, v, att.scale)

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor:
        return x + layer.mlp(layer.layer_norm2(x))
