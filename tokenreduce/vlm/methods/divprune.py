"""DivPrune: Alvar et al., "DivPrune: Diversity-based Visual Token Pruning for Large Multimodal Models", CVPR 2025.
Keep the visual tokens that solve a max-min diversity problem greedily on their embeddings (cosine distance)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...core.diversity import cosine_self, max_min_greedy
from .base import BeforeMethod, register


@register
@dataclass(frozen=True)
class DivPrune(BeforeMethod):
    """DivPrune (Alvar et al., CVPR 2025): greedy max-min diversity on the visual tokens entering the LLM.

    Distance is 1 - cosine of the projected embeddings (the paper's features after the projector). The first
    token is the one farthest from its nearest neighbour; each next one maximizes its distance to the nearest
    token kept so far. No attention is read, so it runs on every family (Qwen2-VL included).
    """

    name: ClassVar[str] = "divprune"

    def reduce(self, emb, grid, cls, k):
        picked = max_min_greedy(1.0 - cosine_self(emb), k)
        idx = torch.sort(picked).values
        return idx, emb[idx]

    def image_macs(self, n, k, hidden, vision_width):
        return n * n * hidden  # the n x n similarity (the greedy updates are O(n k) comparisons, no MACs)
