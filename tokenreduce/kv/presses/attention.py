"""Presses scored by (recomputed) attention: SnapKV, TOVA, H2O, Keyformer.

None of them needs eager attention: the rows they use are rebuilt from the layer's queries and the
cached keys (:mod:`tokenreduce.kv.scoring`).

- SnapKV: Y. Li et al., "SnapKV: LLM Knows What You are Looking for Before Generation", NeurIPS 2024
  (arXiv:2404.14469). Attention of an observation window of the last queries, pooled over neighbours.
- TOVA: M. Oren, M. Hassid, N. Yarden, Y. Adi, R. Schwartz, "Transformers are Multi-State RNNs",
  EMNLP 2024 (arXiv:2401.06104). Attention of the last token, averaged over the layer's heads.
- H2O: Z. Zhang et al., "H2O: Heavy-Hitter Oracle for Efficient Generative Inference of Large Language
  Models", NeurIPS 2023 (arXiv:2306.14048). Attention accumulated over all queries + recent tokens.
- Keyformer: M. Adnan et al., "Keyformer: KV Cache Reduction through Key Tokens Selection for Efficient
  Generative Inference", MLSys 2024 (arXiv:2403.09054). Gumbel-perturbed, tempered softmax scores.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .. import scoring
from ..select import row_budgets, row_noise
from .base import LayerView, Press, check_window, register


def _recent_bonus(view: LayerView, scores: Tensor, count: Tensor) -> Tensor:
    """+inf on the last ``count[b]`` real tokens of each row (a per-row recent window)."""
    rank_from_end = view.valid.flip(-1).long().cumsum(-1).flip(-1)  # 1 = last real token
    recent = view.valid & (rank_from_end <= count[:, None])
    return scores.masked_fill(recent[:, None, :], float("inf"))


@register("snapkv")
@dataclass(frozen=True)
class SnapKVPress(Press):
    """Mean attention of the last ``window`` queries, max-pooled over ``kernel`` neighbours, GQA-averaged."""

    window: int = 64
    kernel: int = 5
    query_aware = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_window(self, self.window, self.kernel)

    def score(self, view: LayerView) -> Tensor:
        a = view.window_attention(self.window).mean(dim=2)  # (B, H, N)
        s = scoring.group_mean(scoring.pool1d(a, self.kernel), view.n_kv_heads)
        w = torch.full((s.shape[0],), min(self.window, view.hidden.shape[1]), device=s.device)
        return _recent_bonus(view, s, w)  # the window itself is always kept


@register("tova")
@dataclass(frozen=True)
class TOVAPress(Press):
    """Attention of the last query averaged over all heads of the layer (same tokens for every head)."""

    query_aware = True

    def score(self, view: LayerView) -> Tensor:
        a = view.window_attention(1)[:, :, 0].mean(dim=1, keepdim=True)  # (B, 1, N)
        s = a.expand(-1, view.n_kv_heads, -1)
        return _recent_bonus(view, s, torch.ones(s.shape[0], dtype=torch.long, device=s.device))


@register("h2o")
@dataclass(frozen=True)
class H2OPress(Press):
    """Accumulated attention over all prompt queries; ``recent_share`` of each row's budget is recent tokens."""

    recent_share: float = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.recent_share <= 1.0:
            raise ValueError(f"h2o: recent_share must be in [0, 1], got {self.recent_share!r}")

    def score(self, view: LayerView) -> Tensor:
        s = scoring.group_mean(view.column_mass, view.n_kv_heads)
        k = row_budgets(view.valid, self.layer_keep(view.layer, view.n_layers))
        return _recent_bonus(view, s, (k.double() * self.recent_share).floor().long())


@register("keyformer")
@dataclass(frozen=True)
class KeyformerPress(Press):
    """Window scores from softmax((logits + Gumbel noise) / tau), accumulated over the window queries."""

    window: int = 64
    tau: float = 1.0
    seed: int = 0
    query_aware = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_window(self, self.window)
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
        return _recent_bonus(view, s, torch.full((s.shape[0],), w, device=s.device))
