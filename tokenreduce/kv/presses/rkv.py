"""R-KV: redundancy-aware eviction during long generations (important and not redundant entries kept).

Z. Cai, W. Xiao, H. Sun, C. Luo, Y. Zhang, K. Wan, Y. Li, Y. Zhou, L.-W. Chang, J. Gu, Z. Dong,
A. Anandkumar, A. Asi, J. Hu, "R-KV: Redundancy-aware KV Cache Compression for Reasoning Models",
arXiv:2505.24133 (2025).

Score = ``lam * importance - (1 - lam) * redundancy`` per KV head. Importance: the attention of the last
``window`` queries, averaged over them and the GQA group, max-pooled over ``kernel`` neighbours.
Redundancy: each key's mean cosine similarity to the row's other real keys, where among the keys more
than ``threshold``-similar to it the newest one is not counted (so the newest of a run of near-duplicates
survives), softmax-normalized over the row. The window itself is always kept. Like ``decoding``, it
compresses during generation: whenever a row holds ``target + interval`` real entries it is shrunk back
to ``target`` (the prompt only when ``keep < 1``); during decoding the window is the current token's
query alone (one forward), where the paper keeps the last queries' statistics.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from ...registry import check_range
from .. import scoring
from .base import DecodeTimePress, LayerView, ScoringPress, Shape, register, window_macs
from .common import check_window, recent_bonus


def pool_real(scores: Tensor, valid: Tensor, kernel: int) -> Tensor:
    """Max-pool non-negative ``scores`` (B, Hkv, N) over ``kernel`` neighbouring *real* entries: padding in the
    middle of a row (a question block fed after compression) does not separate neighbours, so a row pools
    the same in a batch as alone."""
    order = (~valid).long().argsort(dim=-1, stable=True)[:, None, :].expand_as(scores)  # real entries first
    packed = scores.gather(-1, order).masked_fill(~valid.gather(-1, order[:, 0])[:, None, :], 0.0)
    return torch.empty_like(packed).scatter_(-1, order, scoring.pool1d(packed, kernel))


def redundancy(keys: Tensor, valid: Tensor, threshold: float) -> Tensor:
    """Softmax over each row's real keys of their mean cosine similarity to the other real keys (B, Hkv, N);
    for each key, its most similar-above-``threshold`` newest partner is left out of the mean."""
    unit = F.normalize(keys.float(), dim=-1)
    sim = unit @ unit.transpose(-1, -2)  # (B, Hkv, N, N)
    n = sim.shape[-1]
    pair = valid[:, None, :, None] & valid[:, None, None, :] & ~torch.eye(n, dtype=torch.bool, device=sim.device)
    sim = sim.masked_fill(~pair, 0.0)
    pos = torch.arange(n, device=sim.device)
    newest = torch.where(sim > threshold, pos, -1).amax(-1, keepdim=True)  # newest similar partner, -1 none
    sim = sim.masked_fill(pos == newest, 0.0)
    count = (valid.sum(-1) - 1).clamp(min=1).float()[:, None, None]
    mean = sim.sum(-1) / count
    return torch.softmax(mean.masked_fill(~valid[:, None, :], float("-inf")), dim=-1).nan_to_num_(0.0)


@register("rkv")
@dataclass(frozen=True)
class RKV(DecodeTimePress):
    """``lam * pooled window attention - (1 - lam) * redundancy``; decode-time budget ``target``."""

    keep_optional = True  # the decode-time budget is ``target``; ``keep`` only compresses the prompt too

    window: int = 8
    kernel: int = 7
    lam: float = 0.1
    threshold: float = 0.5
    target: int = 256  # entries kept per row after each decode-time compression
    interval: int = 64  # compress when the cache holds target + interval entries

    query_aware = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_window(self.name, self.window, self.kernel)
        check_range(self.name, "lam", self.lam, 0.0, 1.0, hint=" (weight of importance against redundancy)")
        check_range(self.name, "threshold", self.threshold, -1.0, 1.0, hint=" (cosine similarity)")
        check_range(self.name, "target", self.target, 1)
        check_range(self.name, "interval", self.interval, 1)

    def score(self, view: LayerView) -> Tensor:
        a = scoring.group_mean(view.window_attention(self.window).mean(dim=2), view.n_kv_heads)  # (B, Hkv, N)
        importance = pool_real(a, view.valid, self.kernel)
        s = self.lam * importance - (1.0 - self.lam) * redundancy(view.keys, view.valid, self.threshold)
        w = torch.full((s.shape[0],), min(self.window, view.hidden.shape[1]), device=s.device)
        return recent_bonus(view, s, w)

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """The window's attention (queries projected again, logits against every key) and every key's cosine
        against every other (``n x n`` per KV head). A decode-time compression costs the same with ``n`` the
        entries held and a window of one query."""
        return window_macs(shape, min(self.window, n), n) + n * n * shape.kv_heads * shape.head_dim

    def decode_step(self, counts: Tensor) -> tuple[ScoringPress, Tensor] | None:
        """Per-row budgets ``target`` for the rows holding ``target + interval`` real entries (the others keep
        theirs), scored by this press; None when no row is due."""
        due = counts >= self.target + self.interval
        if not bool(due.any()):
            return None
        return replace(self, keep=1.0), torch.where(due, torch.full_like(counts, self.target), counts)
