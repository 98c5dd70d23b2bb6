"""Keyformer: window attention from a Gumbel-perturbed, tempered softmax.

M. Adnan et al., "Keyformer: KV Cache Reduction through Key Tokens Selection for Efficient Generative
Inference", MLSys 2024 (arXiv:2403.09054). The window's logits are recomputed (no eager attention);
the Gumbel noise is indexed by each token's rank among the row's real tokens, so a row scores the same
in any batch. The window itself is always kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import scoring
from ..select import row_noise
from .base import LayerView, ScoringPress, Shape, register, window_macs
from .common import check_window, recent_bonus


@register("keyformer")
@dataclass(frozen=True)
class Keyformer(ScoringPress):
    """Window scores from softmax((logits + Gumbel noise) / tau), accumulated over the window queries."""

    window: int = 64
    tau: float = 1.0
    seed: int = 0
    query_aware = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_window(self.name, self.window)
        if self.tau <= 0:
            raise ValueError(f"keyformer: tau must be > 0, got {self.tau!r}")

    def score(self, view: LayerView) -> Tensor:
        w = min(self.window, view.hidden.shape[1])
        q = scoring.window_queries(view.module, view.hidden[:, -w:], view.cos[:, -w:], view.sin[:, -w:])
        logits = scoring.window_logits(q, view.keys, view.module.scaling, view.valid)
        u = row_noise(view.valid, logits.shape[1:3], self.seed * 1000 + view.layer).clamp_(1e-10, 1 - 1e-10)
        gumbel = -torch.log(-torch.log(u))
        a = torch.softmax((logits + gumbel) / self.tau, dim=-1).nan_to_num_(0.0).sum(dim=2)
        s = scoring.group_mean(a, view.n_kv_heads)
        return recent_bonus(view, s, torch.full((s.shape[0],), w, device=s.device))

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """The window's queries projected again and their logits against every key (the noise is elementwise)."""
        return window_macs(shape, min(self.window, n), n)
