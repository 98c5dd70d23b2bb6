"""Hugging Face SigLIP and SigLIP 2 vision towers, alone or inside the dual ``SiglipModel`` /
``Siglip2Model`` (only the vision tower is patched; the text tower is untouched).

Block = x + attn(ln1(x)); x + mlp(ln2(x)), as CLIP. SigLIP has no [CLS] token, so nothing is
protected by default and methods that score by [CLS] attention (EViT) are refused by ``patch``.

Pooling: the attention-pooling head (a learned probe attending over all tokens) reads the
restored-length output. A merged group appears once per original patch, so the probe's softmax
weights it by its size: exactly proportional attention over the reduced tokens (tested). A pruned
patch holds the size-weighted mean of the survivors (see ``runner._survivor_mean``), so the probe
sees that mean once per pruned patch; with ``restore_length=False`` it sees only the survivors,
unweighted. SigLIP 2's padded patches (``pixel_attention_mask``) are padding: never merged, and
masked by the head at the original length.
"""

from __future__ import annotations

from torch import Tensor, nn

from .base import AttnOut, ModelDims, module_list_of
from .hf_attention import run_attention

LAYERS = {"SiglipEncoderLayer", "Siglip2EncoderLayer"}
EMBEDDINGS = {"SiglipVisionEmbeddings", "Siglip2VisionEmbeddings"}


class HFSiglipVision:
    name = "hf-siglip-vision"

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        layers = module_list_of(model, LAYERS, prefer="vision")
        if layers is None or not any(type(m).__name__ in EMBEDDINGS for m in model.modules()):
            return None  # a text tower alone is not a vision encoder
        return layers

    def default_protected(self, model: nn.Module) -> int:
        return 0  # no [CLS]: every patch token may be reduced

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
