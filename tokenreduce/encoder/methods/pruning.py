"""Score-based pruning: keep the highest-scoring tokens, fuse or drop the rest.

A pruner only says how important each token is (``score``); selection, fusion and budgets are
shared. Fusion follows EViT: the pruned tokens become one token, their average weighted by
``fuse_weights`` (attention for EViT, uniform otherwise), so nothing is thrown away outright.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...core.prune import topk_assignment
from .base import LayerTensors, Method, Plan


@dataclass(frozen=True)
class ScorePruner(Method):
    fuse: bool = False

    cap: ClassVar[float] = 0.9

    @property
    def drops(self) -> bool:  # type: ignore[override]
        return not self.fuse

    def score(self, t: LayerTensors) -> Tensor:  # pragma: no cover - abstract
        """(B, N) importance; higher is kept."""
        raise NotImplementedError

    def fuse_weights(self, t: LayerTensors, scores: Tensor) -> Tensor:
        return torch.ones_like(scores)

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        scores = self.score(t)
        # the fused token takes one slot, so fusing drops one extra token to remove n_remove net
        n_drop = torch.where(n_remove > 0, n_remove + 1, 0) if self.fuse else n_remove
        dst, n_out, fused = topk_assignment(scores, n_drop, t.sizes > 0, t.protected, self.fuse, t.n_out)
        if not self.fuse:
            return Plan(dst, n_out, one_to_one=True)
        weights = torch.where(fused, self.fuse_weights(t, scores) * t.sizes, t.sizes)
        return Plan(dst, n_out, weights)
