"""Encoders (BERT family, sentence-transformers, ViT/DeiT/CLIP/DINOv2/SigLIP, timm): token merging and
pruning inside the transformer blocks.

``methods/`` holds one frozen dataclass per method, registered by name; ``adapters/`` one file per
model family (how to split a block into attention and MLP) plus the runner that patches blocks;
``cost`` the analytic MAC count of a reduced forward (what each method owns).
"""

from .adapters import families, patch, patched, unpatch
from .adapters.patching import patch_info
from .methods import LayerTensors, Method, Plan, make_method, register

__all__ = ["LayerTensors", "Method", "Plan", "families", "make_method", "patch", "patch_info", "patched", "register",
           "unpatch"]
