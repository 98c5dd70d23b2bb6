"""Visual-token reduction methods for vision-language models, registered by name.

Two kinds, one budget: ``keep`` (fraction of each image's visual tokens) or ``tokens`` (count per image).

* ``before`` methods shrink each image's tokens as they enter the LLM (after the projector):
  FasterVLM, VisionZip, visual ToMe, random and spatial pooling.
* ``inside`` methods drop visual tokens between decoder layers, ranked by attention computed from
  the previous layer's own projections (so SDPA keeps working): FastV, PyramidDrop, text-guided.

Every kept token keeps its original position (1-D or M-RoPE), so a later ``generate`` continues at
the position the unpruned model would use; a merged token takes the position of its target.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ..registry import Registry
from . import reduce as R


def register(cls: type[VisualMethod]) -> type[VisualMethod]:
    """Class decorator registering a visual-token method under its ``name``."""
    return REGISTRY.register(cls.name)(cls)


def vlm_methods() -> list[str]:
    return REGISTRY.names()


def make_vlm_method(method: str | VisualMethod, **params: Any) -> VisualMethod:
    return REGISTRY.make(method, **params)


@dataclass(frozen=True)
class VisualMethod:
    keep: float | None = None
    tokens: int | None = None

    name: ClassVar[str] = ""
    stage: ClassVar[str] = "before"
    needs_cls: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if (self.keep is None) == (self.tokens is None):
            raise ValueError(f"{self.name}: give exactly one of keep (fraction in (0, 1]) or tokens (per image)")
        if self.keep is not None and not 0.0 < self.keep <= 1.0:
            raise ValueError(f"{self.name}: keep must be in (0, 1], got {self.keep}")
        if self.tokens is not None and (not isinstance(self.tokens, int) or self.tokens < 1):
            raise ValueError(f"{self.name}: tokens must be a positive int, got {self.tokens!r}")

    def budget(self, n: int) -> int:
        """Tokens kept out of an image's ``n`` (at least 1, at most n)."""
        k = self.tokens if self.tokens is not None else round(self.keep * n)
        return max(1, min(n, k))


REGISTRY: Registry[VisualMethod] = Registry("visual-token method", VisualMethod)


@dataclass(frozen=True)
class BeforeMethod(VisualMethod):
    def reduce(self, emb: Tensor, grid: tuple[int, int], cls: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
        raise NotImplementedError  # pragma: no cover


@register
@dataclass(frozen=True)
class FasterVLM(BeforeMethod):
    """FasterVLM (Zhang et al., "[CLS] Attention is All You Need for Training-Free Visual Token Pruning",
    arXiv 2412.01818): keep the tokens the vision tower's [CLS] attends to most in the feature layer."""

    thumbnail_guidance: bool = False  # LLaVA-NeXT: crop budgets follow the thumbnail's attention (next.py)
    name: ClassVar[str] = "fastervlm"
    needs_cls: ClassVar[bool] = True

    def reduce(self, emb, grid, cls, k):
        return R.select(emb, cls, k)


@register
@dataclass(frozen=True)
class VisionZip(BeforeMethod):
    """VisionZip (Yang et al., "VisionZip: Longer is Better but Not Necessary in VLMs", CVPR 2025).

    Dominant tokens by [CLS] attention; the rest are merged into evenly spaced contextual targets by
    similarity. ``dominant`` is the dominant share of the budget (the paper's 54 of 64). We merge the
    projected embeddings (the paper merges before the projector) and measure similarity on them.
    """

    dominant: float = 54 / 64
    thumbnail_guidance: bool = False  # LLaVA-NeXT: crop budgets follow the thumbnail's attention (next.py)
    name: ClassVar[str] = "visionzip"
    needs_cls: ClassVar[bool] = True

    def reduce(self, emb, grid, cls, k):
        kd = min(k, max(1, round(self.dominant * k)))
        dom = R.top_k(cls, kd)
        rest = torch.ones(emb.shape[0], dtype=torch.bool, device=emb.device)
        rest[dom] = False
        cand = rest.nonzero().squeeze(1)
        kc = min(k - kd, len(cand))
        targets = cand[torch.linspace(0, len(cand) - 1, kc).round().long()] if kc else cand[:0]
        if kc == 0:
            return dom, emb[dom]
        return R.merge_into_targets(emb, emb, dom, targets)


@register
@dataclass(frozen=True)
class VisualToMe(BeforeMethod):
    """Bipartite merging of visual tokens before the LLM, as in AIM's first stage (Zhong et al., arXiv
    2412.03248) after ToMe (Bolya et al., ICLR 2023)."""

    name: ClassVar[str] = "visual-tome"

    def reduce(self, emb, grid, cls, k):
        return R.bipartite_merge(emb, k)


@register
@dataclass(frozen=True)
class VisualRandom(BeforeMethod):
    """Baseline: a random subset, the same for every image of a given size (so independent of the batch)."""

    seed: int = 0
    name: ClassVar[str] = "visual-random"

    def reduce(self, emb, grid, cls, k):
        g = torch.Generator().manual_seed(self.seed)
        idx = torch.sort(torch.randperm(emb.shape[0], generator=g)[:k]).values.to(emb.device)
        return idx, emb[idx]


@register
@dataclass(frozen=True)
class VisualPool(BeforeMethod):
    """Baseline: 2-D average pooling of the token grid to at most the budget (LLaVA-NeXT/PLLaVA-style)."""

    name: ClassVar[str] = "visual-pool"

    def reduce(self, emb, grid, cls, k):
        return R.pool(emb, grid, k)


@dataclass(frozen=True)
class InsideMethod(VisualMethod):
    """Drops visual tokens at decoder layers ``stages(depth)``; ``counts`` says how many stay after each."""

    stage: ClassVar[str] = "inside"
    window: ClassVar[str] = "last"  # whose attention rates the visual tokens: "last" token or "text" after them

    def stages(self, depth: int) -> tuple[int, ...]:
        raise NotImplementedError  # pragma: no cover

    def counts(self, n: int, depth: int) -> tuple[int, ...]:
        return tuple(self.budget(n) for _ in self.stages(depth))

    def check(self, depth: int) -> None:
        bad = [s for s in self.stages(depth) if not 1 <= s < depth]
        if bad:
            raise ValueError(f"{self.name}: pruning layers must be in [1, {depth - 1}] for a {depth}-layer LLM: {bad}")


@register
@dataclass(frozen=True)
class FastV(InsideMethod):
    """FastV (Chen et al., "An Image is Worth 1/2 Tokens After Layer 2", ECCV 2024): after layer ``layer``,
    keep the visual tokens the last token attends to most (heads averaged) in the previous layer."""

    layer: int = 2
    name: ClassVar[str] = "fastv"

    def stages(self, depth):
        return (self.layer,)


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

    def stages(self, depth):
        return tuple(self.layers) if self.layers is not None else tuple(max(1, depth * i // 4) for i in (1, 2, 3))

    def counts(self, n, depth):
        k = self.budget(n)
        if k >= n:
            return tuple(n for _ in self.stages(depth))
        return tuple(max(1, round(k * self.ratio**s)) for s in range(len(self.stages(depth))))


@register
@dataclass(frozen=True)
class TextGuided(InsideMethod):
    """Text-guided pruning after SparseVLM (Zhang et al., ICML 2025): the text tokens after the image that
    attend to it most (above-mean visual mass) rate the visual tokens by their mean attention."""

    layer: int = 2
    name: ClassVar[str] = "text-guided"
    window: ClassVar[str] = "text"

    def stages(self, depth):
        return (self.layer,)
