"""VTC-CLS: Wang et al., "[CLS] Token Tells Everything Needed for Training-free Efficient MLLMs", arXiv 2412.05819.
Keep the visual tokens with the highest [CLS] attention summed over several vision layers (a layer ensemble)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...registry import check_range
from .. import reduce
from .base import BeforeMethod, cls_row_macs, register


@register
@dataclass(frozen=True)
class VTCCLS(BeforeMethod):
    """VTC-CLS (Wang et al., arXiv 2412.05819): rank the visual tokens by the [CLS] attention (heads averaged)
    of the last ``layers`` vision blocks up to the feature layer, summed, and keep the top budget. ``layers=1``
    is the paper's single-layer variant (FasterVLM's score); the paper sweeps the first ensembled layer."""

    layers: int = 2
    thumbnail_guidance: bool = False  # LLaVA-NeXT: crop budgets follow the thumbnail's attention
    name: ClassVar[str] = "vtc-cls"
    needs_cls: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "layers", self.layers, 1, hint=" (vision blocks ensembled, ending at the feature layer)")

    def vision_offsets(self, feature_block):
        return tuple(range(1 - self.layers, 1))

    def reduce(self, emb, grid, cls, k):
        return reduce.select(emb, cls, k)

    def image_macs(self, n, k, hidden, vision_width):
        return self.layers * cls_row_macs(n + 1, vision_width)
