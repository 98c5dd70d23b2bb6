"""VisionZip: Yang et al., "VisionZip: Longer is Better but Not Necessary in Vision Language Models", CVPR 2025.
Dominant tokens by [CLS] attention plus contextual tokens: the rest merged into evenly spaced targets."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...registry import check_range
from .. import reduce
from .base import BeforeMethod, register


@register
@dataclass(frozen=True)
class VisionZip(BeforeMethod):
    """VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in VLMs", CVPR 2025).

    Dominant tokens by [CLS] attention; the rest are merged into evenly spaced contextual targets by
    similarity. ``dominant`` is the dominant share of the budget (the paper's 54 of 64). We merge the
    projected embeddings (the paper merges before the projector) and measure similarity on them.
    """

    dominant: float = 54 / 64
    thumbnail_guidance: bool = False  # LLaVA-NeXT: crop budgets follow the thumbnail's attention
    name: ClassVar[str] = "visionzip"
    needs_cls: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "dominant", self.dominant, 0.0, 1.0, hint=" (dominant share of the budget)")

    def split(self, k: int) -> int:
        """Dominant tokens out of a budget of ``k`` (at least 1); the rest are contextual."""
        return min(k, max(1, round(self.dominant * k)))

    def reduce(self, emb, grid, cls, k):
        kd = self.split(k)
        dom = reduce.top_k(cls, kd)
        rest = torch.ones(emb.shape[0], dtype=torch.bool, device=emb.device)
        rest[dom] = False
        cand = rest.nonzero().squeeze(1)
        kc = min(k - kd, len(cand))
        if kc == 0:
            return dom, emb[dom]
        targets = cand[torch.linspace(0, len(cand) - 1, kc, device=cand.device).round().long()]
        return reduce.merge_into_targets(emb, emb, dom, targets)

    def image_macs(self, n, k, hidden, vision_width):
        kd = self.split(k)
        kc = min(k - kd, n - kd)
        return super().image_macs(n, k, hidden, vision_width) + ((n - kd - kc) * kc * hidden if kc else 0)
