"""EViT: keep the tokens the [CLS] token attends to most; fuse the rest into one token.

Liang et al., "Not All Patches are What You Need: Expediting Vision Transformers via Token
Reorganizations", ICLR 2022 (arXiv:2202.07800). The score is one attention row, computed next to
SDPA in O(N·d), so no full attention matrix is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ..core.dims import ModelDims
from ..core.prune import topk_assignment
from .base import LayerTensors, Method, Plan, register


def prune_plan(scores: Tensor, t: LayerTensors, n_remove: Tensor, fuse: bool, fuse_weights: Tensor) -> Plan:
    """Top-k pruning plan shared by the score-based pruners (fusing drops one extra token so the
    net removal matches the schedule)."""
    n_drop = torch.where(n_remove > 0, n_remove + 1, 0) if fuse else n_remove
    dst, n_out, fused = topk_assignment(scores, n_drop, t.sizes > 0, t.protected, fuse)
    if not fuse:
        return Plan(dst, n_out, one_to_one=True)
    weights = torch.where(fused, fuse_weights * t.sizes, t.sizes)
    return Plan(dst, n_out, weights)


@register("evit")
@dataclass(frozen=True)
class EViT(Method):
    """Keep the tokens [CLS] attends to most; fuse the rest into one token (or drop them)."""

    fuse: bool = True

    needs: ClassVar[frozenset[str]] = frozenset({"cls_attn"})
    cap: ClassVar[float] = 0.9

    @property
    def drops(self) -> bool:  # type: ignore[override]
        return not self.fuse

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        return prune_plan(t.cls_attn, t, n_remove, self.fuse, t.cls_attn)

    def cost_macs(self, n: int, dims: ModelDims, protected: int) -> int:
        return dims.heads * n * dims.head_dim  # q_cls · K^T per head (the softmax is not a matmul)
