"""ThinK: prune the key channels the last queries use least (real bytes saved), optionally evict too.

Y. Xu, Z. Jie, H. Dong, L. Wang, X. Lu, A. Zhou, A. Saha, C. Xiong, D. Sahoo, "ThinK: Thinner Key Cache
by Query-Driven Pruning", ICLR 2025 (arXiv:2407.21018).

Channel ``c`` of a KV head scores ``mean_w(q_c^2) * mean_n(k_c^2)``: the last ``window`` real queries'
(averaged over the GQA group) against the row's real keys -- the channel's share of ``|q . k|`` for
those queries (kvpress's ``ThinKPress`` rule). Each (row, KV head) keeps its best ``channel_keep`` share
of the D key channels and the keys are *stored* with those channels only (:class:`ChannelLayer`: Dk
channels plus int16 indices per head), where kvpress zeroes them and saves nothing; values are whole.
``keep < 1`` first evicts entries by ``scorer``'s scores (SnapKV by default), as kvpress composes
``SnapKV + ThinK``; the channels are chosen from the layer before eviction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ...registry import check_range
from .. import scoring
from ..channels import ChannelLayer
from .base import ChannelPress, LayerView, ScoringPress, Shape, register
from .common import check_window, compose_scorer


def channel_scores(view: LayerView, window: int) -> Tensor:
    """ThinK's score of every key channel (B, Hkv, D): mean squared window query (real queries, GQA-averaged)
    times mean squared real key."""
    w = min(window, view.hidden.shape[1])
    q = scoring.window_queries(view.module, view.hidden[:, -w:], view.cos[:, -w:], view.sin[:, -w:]).float()
    n = view.keys.shape[2]
    real_q = view.valid[:, n - w:].float()[:, None, :, None]  # (B, 1, w, 1)
    q2 = (q * q * real_q).sum(2) / real_q.sum(2).clamp(min=1.0)  # (B, H, D)
    b, h, d = q2.shape
    hkv = view.n_kv_heads
    q2 = q2.view(b, hkv, h // hkv, d).mean(2)
    real_k = view.valid.float()[:, None, :, None]
    k = view.keys.float()
    k2 = (k * k * real_k).sum(2) / real_k.sum(2).clamp(min=1.0)
    return q2 * k2


@register("think")
@dataclass(frozen=True)
class ThinK(ChannelPress, ScoringPress):
    """Keep ``channel_keep`` of the key channels per (row, KV head) by ``window`` query energy; ``keep`` evicts."""

    keep_optional = True  # channel pruning alone saves memory

    channel_keep: float = 0.5
    window: int = 32
    scorer: ScoringPress | str = "snapkv"  # evicts entries when keep < 1; a name becomes the press object

    query_aware = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "channel_keep", self.channel_keep, 0.0, 1.0, low_open=True,
                    hint=" (fraction of key channels kept)")
        check_window(self.name, self.window)
        object.__setattr__(self, "scorer", compose_scorer(self, self.scorer))

    def score(self, view: LayerView) -> Tensor:
        assert isinstance(self.scorer, ScoringPress)  # made a press in __post_init__
        if self.keep >= 1.0:  # nothing evicted: the scores are not needed
            return torch.zeros(view.keys.shape[:3], device=view.keys.device)
        return self.scorer.score(view)

    def kept_channels(self, d: int) -> int:
        """Key channels kept of ``d`` (kvpress's count: ``d - int(d * (1 - channel_keep))``)."""
        return d - int(d * (1.0 - self.channel_keep) + 1e-9)

    def channel_layer(self, view: LayerView, keys: Tensor, values: Tensor) -> ChannelLayer | None:
        d = keys.shape[-1]
        k = self.kept_channels(d)
        if k >= d:
            return None
        top = channel_scores(view, self.window).topk(k, dim=-1).indices.sort(-1).values
        return ChannelLayer(keys, values, top)

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """The window's queries projected again for the channel scores (when a channel is pruned; the energies
        are elementwise), plus the scorer's when ``keep < 1``."""
        own = min(self.window, n) * shape.hidden * shape.heads * shape.head_dim
        channels = own if self.kept_channels(shape.head_dim) < shape.head_dim else 0
        assert isinstance(self.scorer, ScoringPress)
        return channels + (self.scorer.scoring_macs(shape, n) if self.keep < 1.0 else 0)
