"""StreamingLLM: keep the first tokens (attention sinks) and the most recent ones.

G. Xiao, Y. Tian, B. Chen, S. Han, M. Lewis, "Efficient Streaming Language Models with Attention
Sinks", ICLR 2024 (arXiv:2309.17453). The sinks are the shared ``sinks`` protection (4 by default);
scores rise with position, so the rest of the budget goes to the newest tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .base import LayerView, ScoringPress, Shape, register


@register("streaming_llm")
@dataclass(frozen=True)
class StreamingLLM(ScoringPress):
    """``sinks`` first tokens plus the most recent ones."""

    sinks: int = 4

    def score(self, view: LayerView) -> Tensor:
        pos = torch.arange(view.keys.shape[2], device=view.keys.device, dtype=torch.float32)
        return pos.expand(view.keys.shape[:3])

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """0: positions."""
        return 0
