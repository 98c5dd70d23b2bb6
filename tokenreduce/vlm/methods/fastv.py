"""FastV: Chen et al., "An Image is Worth 1/2 Tokens After Layer 2: Plug-and-Play Inference Acceleration for
Large Vision-Language Models", ECCV 2024. After layer ``layer``, keep the visual tokens the last token
attends to most (heads averaged) in the previous layer."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...registry import check_range
from .base import InsideMethod, register


@register
@dataclass(frozen=True)
class FastV(InsideMethod):
    """FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024): after layer ``layer``,
    keep the visual tokens the last token attends to most (heads averaged) in the previous layer."""

    layer: int = 2
    name: ClassVar[str] = "fastv"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "layer", self.layer, 1, hint=" (decoder layer the pruning happens before)")

    def stages(self, depth):
        return (self.layer,)
