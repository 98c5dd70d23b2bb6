"""Cheap baselines: prune by hidden-state norm, or at random.

Random and norm-based top-k are the baselines every token-reduction paper should beat; both need
no attention statistics at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core.prune import hash_uniform
from .base import LayerTensors, Method, Plan, register
from .evit import prune_plan


@register("topk-norm")
@dataclass(frozen=True)
class TopKNorm(Method):
    """Keep the tokens with the largest L2 norm after attention (optionally fuse the rest)."""

    fuse: bool = False

    cap: ClassVar[float] = 0.9

    @property
    def drops(self) -> bool:  # type: ignore[override]
        return not self.fuse

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        scores = t.x.float().norm(dim=-1)
        return prune_plan(scores, t, n_remove, self.fuse, torch.ones_like(scores))


@register("random")
@dataclass(frozen=True)
class RandomPrune(Method):
    """Drop uniformly random tokens (deterministic per seed, layer and position)."""

    seed: int = 0
    fuse: bool = False

    cap: ClassVar[float] = 0.9

    @property
    def drops(self) -> bool:  # type: ignore[override]
        return not self.fuse

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        pos = torch.arange(t.x.shape[1], device=t.x.device).expand(t.x.shape[0], -1)
        scores = hash_uniform(pos, self.seed, t.layer)
        return prune_plan(scores, t, n_remove, self.fuse, torch.ones_like(scores))
