"""Key norm: keys with a low L2 norm get high attention, so they are kept.

A. Devoto, Y. Zhao, S. Scardapane, P. Minervini, "A Simple and Effective L2 Norm-Based Strategy for
KV Cache Compression", EMNLP 2024 (arXiv:2406.11430). Needs no attention at all (works with any
attention implementation, and as the default scorer of decode-time compression).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import LayerView, ScoringPress, Shape, register


@register("key_norm")
@dataclass(frozen=True)
class KeyNorm(ScoringPress):
    """Minus the L2 norm of each cached key."""

    def score(self, view: LayerView) -> Tensor:
        return -view.keys.float().norm(dim=-1)

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """0: key norms are elementwise (``n * head_dim`` multiply-adds per KV head, not matmuls)."""
        return 0
