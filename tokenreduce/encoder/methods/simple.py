"""Cheap baselines: prune by hidden-state norm, or at random.

Random and norm-based top-k are the baselines every token-reduction paper should beat; both need
no attention statistics at all.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...core.noise import hash_uniform
from .base import LayerTensors, register
from .pruning import ScorePruner


@register("topk-norm")
@dataclass(frozen=True)
class TopKNorm(ScorePruner):
    """Keep the tokens with the largest L2 norm after attention (optionally fuse the rest)."""

    def score(self, t: LayerTensors) -> Tensor:
        return t.x.float().norm(dim=-1)


@register("random")
@dataclass(frozen=True)
class RandomPrune(ScorePruner):
    """Drop uniformly random tokens (deterministic per seed, layer and position)."""

    seed: int = 0

    def score(self, t: LayerTensors) -> Tensor:
        pos = torch.arange(t.x.shape[1], device=t.x.device).expand(t.x.shape[0], -1)
        return hash_uniform(pos, self.seed, t.layer)
