"""Family adapters: one module per supported VLM family, each a :class:`~.base.VLMFamily` subclass.

* :mod:`.llava`: LLaVA-1.5 (fixed grids, [CLS] from the CLIP tower);
* :mod:`.llava_next`: LLaVA-NeXT (AnyRes crop layouts, per-crop budgets, thumbnail guidance);
* :mod:`.qwen2_vl`: Qwen2-VL / Qwen2.5-VL (grids from ``image_grid_thw``, 3-D M-RoPE positions; videos);
* :mod:`.llava_next_video`, :mod:`.llava_onevision`: LLaVA-NeXT-Video and LLaVA-OneVision videos (video methods).

A new family is one module with a subclass naming its outer model classes, added to ``FAMILIES``.
"""

from __future__ import annotations

from torch import nn

from .base import Image, Piece, VLMFamily
from .llava import Llava
from .llava_next import LlavaNext
from .llava_next_video import LlavaNextVideo
from .llava_onevision import LlavaOnevision
from .qwen2_vl import Qwen2VL

FAMILIES: tuple[type[VLMFamily], ...] = (Llava, LlavaNext, Qwen2VL, LlavaNextVideo, LlavaOnevision)


def find_vlm(model: nn.Module) -> VLMFamily | None:
    """The family adapter bound to ``model``'s multimodal model, or None when ``model`` is not a supported VLM."""
    by_class = {name: fam for fam in FAMILIES for name in fam.model_classes}
    outer = next((m for m in model.modules() if type(m).__name__ in by_class), None)
    return None if outer is None else by_class[type(outer).__name__](outer)


__all__ = [
    "FAMILIES", "Image", "Llava", "LlavaNext", "LlavaNextVideo", "LlavaOnevision", "Piece", "Qwen2VL", "VLMFamily",
    "find_vlm",
]
