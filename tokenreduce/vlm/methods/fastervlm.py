"""FasterVLM: Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning: Make VLM
Inference Faster", arXiv 2412.01818. Keep the patches the vision tower's [CLS] attends to most in the
feature layer, before the LLM (LLaVA only: Qwen2-VL's tower has no [CLS])."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from .. import reduce
from .base import BeforeMethod, register


@register
@dataclass(frozen=True)
class FasterVLM(BeforeMethod):
    """FasterVLM (Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning",
    arXiv 2412.01818): keep the tokens the vision tower's [CLS] attends to most in the feature layer."""

    thumbnail_guidance: bool = False  # LLaVA-NeXT: crop budgets follow the thumbnail's attention
    name: ClassVar[str] = "fastervlm"
    needs_cls: ClassVar[bool] = True

    def reduce(self, emb, grid, cls, k):
        return reduce.select(emb, cls, k)
