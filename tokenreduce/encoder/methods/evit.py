"""EViT: keep the tokens the [CLS] token attends to most; fuse the rest into one token.

Liang et al., "Not All Patches are What You Need: Expediting Vision Transformers via Token
Reorganizations", ICLR 2022 (arXiv:2202.07800). The score is one attention row, computed next to
SDPA in O(N·d), so no full attention matrix is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ...core.dims import ModelDims
from .base import LayerTensors, register
from .pruning import ScorePruner


@register("evit")
@dataclass(frozen=True)
class EViT(ScorePruner):
    """Keep the tokens [CLS] attends to most; fuse the rest into one token (or drop them)."""

    fuse: bool = True

    needs: ClassVar[frozenset[str]] = frozenset({"cls_attn"})

    def score(self, t: LayerTensors) -> Tensor:
        return t.cls_attn

    def fuse_weights(self, t: LayerTensors, scores: Tensor) -> Tensor:
        return scores  # the fused token is the attention-weighted average of the pruned ones

    def cost_macs(self, n: int, dims: ModelDims, protected: int) -> int:
        return dims.heads * n * dims.head_dim  # q_cls · K^T per head (the softmax is not a matmul)
