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

from torch import nn

from .base import module_list_of
from .hf_vit import HFCLIPVision

LAYERS = {"SiglipEncoderLayer", "Siglip2EncoderLayer"}
EMBEDDINGS = {"SiglipVisionEmbeddings", "Siglip2VisionEmbeddings"}


class HFSiglipVision(HFCLIPVision):
    """Same block layout and attention module as CLIP's; only discovery and protection differ."""

    name = "hf-siglip-vision"
    padded = True  # SigLIP 2 pads patch sequences (pixel_attention_mask)

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None:
        layers = module_list_of(model, LAYERS, prefer="vision")
        if layers is None or not any(type(m).__name__ in EMBEDDINGS for m in model.modules()):
            return None  # a text tower alone is not a vision encoder
        return layers

    def default_protected(self, model: nn.Module) -> int:
        return 0  # no [CLS]: every patch token may be reduced
