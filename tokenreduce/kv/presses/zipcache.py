"""ZipCache-style mixed-precision KV: salient entries in full precision, the rest quantized to 8 or 4 bits.

Y. He, L. Zhang, W. Wu, J. Liu, H. Zhou, B. Zhuang, "ZipCache: Accurate and Efficient KV Cache
Quantization with Salient Token Identification", NeurIPS 2024 (arXiv:2405.14256).

Saliency is ZipCache's *normalized* attention: the attention a key receives from a set of probe
queries divided by how many of those probes can see it (plain accumulated attention favours early
keys, which every later query sees). Probes are the last ``window`` real tokens plus every
``stride``-th real token before them (ZipCache samples recent + random probes; a fixed stride keeps
results reproducible and independent of the batch). Another press's scores can be used instead
(``scorer``: any plain scoring press or its name, ``ZipCache(scorer=SnapKV())``). Keys and values are
quantized per token in channel groups (``group``); with ``key_channels`` keys are first divided per
channel by the square root of the channel's largest magnitude in the row (the paper's channel-separable
keys; D float16 divisors per head). Difference from the paper: salient entries stay in the cache dtype
instead of a higher bit width. ``keep < 1`` first evicts by the same scores, then quantizes what is kept.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .. import quant, scoring
from ..mixed import MixedLayer, salient_positions
from ..select import real_rank
from .base import LayerView, MixedPrecisionPress, ScoringPress, register
from .common import compose_scorer


def normalized_attention(view: LayerView, window: int, stride: int, chunk: int = 256) -> Tensor:
    """Mean attention (B, Hkv, N) each key gets from the probe queries that can see it, GQA-averaged."""
    b, q_len = view.hidden.shape[:2]
    n = view.keys.shape[2]
    offset = n - q_len
    valid_q = view.valid[:, offset:]
    rank, n_real = real_rank(valid_q), valid_q.sum(-1, keepdim=True)
    probe = valid_q & ((rank >= n_real - window) | (rank % stride == stride - 1))
    total, count = 0.0, torch.zeros(b, 1, n, device=view.keys.device)
    for cols in probe.any(0).nonzero().flatten().split(chunk):
        q = scoring.window_queries(view.module, view.hidden[:, cols], view.cos[:, cols], view.sin[:, cols])
        a = scoring.window_attention(q, view.keys, view.module.scaling, view.valid, positions=cols + offset)
        w = probe[:, cols].float()  # (B, c): this row's probes among the union of the batch's
        total = total + (a * w[:, None, :, None]).sum(2)
        sees = torch.arange(n, device=cols.device)[None, :] <= (cols + offset)[:, None]  # (c, N) causal
        count += (w @ sees.float())[:, None, :]
    return scoring.group_mean(total / count.clamp(min=1.0), view.n_kv_heads)


@register("zipcache")
@dataclass(frozen=True)
class ZipCache(MixedPrecisionPress, ScoringPress):
    """``salient``: share of each row's (kept) entries held in full precision; the rest use ``bits`` (8 or 4)."""

    keep_optional = True  # quantizing alone saves memory

    salient: float = 0.1
    bits: int = 4
    group: int = 32  # channels per (scale, zero) pair
    window: int = 64  # recent probe queries
    stride: int = 20  # every stride-th earlier token is a probe too (~5%)
    scorer: ScoringPress | str | None = None  # None (or "") = normalized attention; else a scoring press
    key_channels: bool = False  # ZipCache's channel-separable keys (divide channels before quantizing)

    def __post_init__(self) -> None:
        super().__post_init__()
        quant.check(self.bits, self.group)
        if not 0.0 <= self.salient <= 1.0:
            raise ValueError(f"zipcache: salient must be in [0, 1], got {self.salient!r}")
        if self.window < 1 or self.stride < 1:
            raise ValueError(f"zipcache: window and stride must be >= 1, got {self.window}, {self.stride}")
        scorer = None if self.scorer is None or self.scorer == "" else compose_scorer(self, self.scorer)
        object.__setattr__(self, "scorer", scorer)

    def check_model(self, model: nn.Module) -> None:
        super().check_model(model)
        cfg = model.config
        dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        quant.check(self.bits, self.group, dim)

    def score(self, view: LayerView) -> Tensor:
        if isinstance(self.scorer, ScoringPress):
            return self.scorer.score(view)
        return normalized_attention(view, self.window, self.stride)

    def build_layer(self, keys: Tensor, values: Tensor, scores: Tensor, valid: Tensor) -> MixedLayer:
        idx = salient_positions(scores, valid, self.salient)
        return MixedLayer(keys, values, idx, self.bits, self.group, valid, bool(self.key_channels))
