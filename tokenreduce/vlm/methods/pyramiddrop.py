"""PyramidDrop: Xing et al., "PyramidDrop: Accelerating Your Large Vision-Language Models via Pyramid Visual
Redundancy Reduction", CVPR 2025. Stage-wise drops inside the LLM; after stage s, ``budget * ratio**s``
visual tokens remain, rated by the last token's attention."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...registry import check_range, is_int
from .base import InsideMethod, register


@register
@dataclass(frozen=True)
class PyramidDrop(InsideMethod):
    """PyramidDrop (Xing et al., CVPR 2025): stage-wise drops; after stage s, ``budget * ratio**s`` remain.

    ``layers`` defaults to depth/4, depth/2, 3*depth/4 (the paper's 8/16/24 of 32). A budget of all
    tokens (``keep=1.0``) disables every stage, so "reduce nothing" means what it says.
    """

    layers: tuple[int, ...] | None = None
    ratio: float = 0.5
    name: ClassVar[str] = "pdrop"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers is not None:
            if not isinstance(self.layers, (tuple, list)) or not self.layers or not all(map(is_int, self.layers)):
                raise ValueError(f"{self.name}: layers must be a non-empty tuple of ints, got {self.layers!r}")
            if list(self.layers) != sorted(set(self.layers)):
                raise ValueError(f"{self.name}: layers must be strictly increasing, got {self.layers!r}")
            object.__setattr__(self, "layers", tuple(self.layers))
        check_range(self.name, "ratio", self.ratio, 0.0, 1.0, low_open=True, hint=" (share kept per stage)")

    def stages(self, depth):
        return self.layers if self.layers is not None else tuple(max(1, depth * i // 4) for i in (1, 2, 3))

    def counts(self, n, depth):
        k = self.budget(n)
        if k >= n:
            return tuple(n for _ in self.stages(depth))
        return tuple(max(1, round(k * self.ratio**s)) for s in range(len(self.stages(depth))))
