"""KV merging: the evicted entries are folded into the kept ones instead of being dropped.

Y. Zhang, Y. Du, G. Luo, Y. Zhong, Z. Zhang, S. Liu, R. Ji, "CaM: Cache Merging for Memory-efficient LLMs
Inference", ICML 2024; Z. Wang, B. Jin, Z. Yu, M. Zhang, "Model Tells You Where to Merge: Adaptive KV Cache
Merging for LLMs on Long-Context Tasks" (KVMerger), arXiv:2407.08454 (2024).

Any plain scoring press (``scorer``, SnapKV's by default) chooses the entries kept, exactly as it would
evict. Each evicted real entry then goes to the kept entry of its row and KV head whose key is most similar
(cosine; KVMerger merges keys that are alike), if that similarity is at least ``threshold``; below it the
entry is dropped as in eviction. Its weight is the attention the last ``window`` queries pay it (averaged
over them and over the GQA group), the prominence by which CaM decides how much of an evicted value to
merge. A kept value becomes the attention-weighted mean of itself and the values merged into it
(``mode="mean"``), or gains each merged value times min(1, its attention / the kept entry's) (``mode="add"``:
CaM's additive merge, which restores the evicted entries' share of the attention output for keys that
receive the same attention, at the price of an output that is too large when much is merged);
``keys=True`` also replaces a kept key by the weighted mean of the keys merged into it (KVMerger merges
both). Kept entries nothing is merged into are left bit for bit. The cache holds the same entries and bytes
as the eviction (``keep`` of the row's entries).

Differences from the papers: CaM merges during decoding, the one entry leaving a recent window spread over
the next entries, with a Bernoulli draw of probability min(1, attention ratio); here the whole prefill is
merged at once, each evicted entry into one kept entry, deterministically with that ratio as a weight.
KVMerger merges runs of consecutive similar keys into their pivot with Gaussian-kernel weights; here any
kept key may be the target, weighted by attention.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from ...registry import check_range
from .. import scoring
from ..select import gather, keep_count
from .base import LayerView, MergingPress, ScoringPress, Shape, register, window_macs
from .common import check_window, compose_scorer

MODES = ("mean", "add")


def merge_entries(
    keys: Tensor, values: Tensor, valid: Tensor, kept: Tensor, prefix_mask: Tensor, weight: Tensor,
    threshold: float, mode: str = "mean", merge_keys: bool = False, chunk: int = 1024,
) -> tuple[Tensor, Tensor]:
    """Kept keys and values (B, Hkv, L, D) with every evicted real entry merged into its most similar kept key.

    ``keys``/``values`` (B, Hkv, N, D); ``valid`` (B, N) real entries; ``kept`` (B, Hkv, L) selected indices,
    ``prefix_mask`` (B, L) False on filler slots; ``weight`` (B, Hkv, N) each entry's attention. Similarities
    are taken ``chunk`` evicted candidates at a time (an N x L matrix per head otherwise)."""
    b, h, n, d = keys.shape
    k_kept, v_kept = gather(keys, kept), gather(values, kept)
    slot = prefix_mask[:, None, :].expand_as(kept)  # (B, Hkv, L) real kept slots
    is_kept = torch.zeros(b, h, n, dtype=torch.bool, device=keys.device).scatter_(-1, kept, slot)
    evicted = valid[:, None, :] & ~is_kept
    if not bool(evicted.any()):
        return k_kept, v_kept
    unit = F.normalize(keys.float(), dim=-1)
    unit_kept = gather(unit, kept).masked_fill(~slot[..., None], 0.0)
    target = torch.zeros(b, h, n, dtype=torch.long, device=keys.device)
    best = torch.full((b, h, n), float("-inf"), device=keys.device)
    for s in range(0, n, chunk):
        sim = (unit[:, :, s : s + chunk] @ unit_kept.transpose(-1, -2)).masked_fill(~slot[:, :, None, :], float("-inf"))
        best[:, :, s : s + chunk], target[:, :, s : s + chunk] = sim.max(-1)
    src = evicted & (best >= threshold)
    if not bool(src.any()):
        return k_kept, v_kept
    w_kept = weight.float().gather(-1, kept)  # (B, Hkv, L)
    if mode == "add":  # CaM: each evicted value scaled by its attention relative to its target's, at most 1
        w = torch.where(src, (weight.float() / w_kept.gather(-1, target).clamp(min=1e-30)).clamp(max=1.0), 0.0)
    else:
        w = torch.where(src, weight.float(), 0.0)
    idx = target[..., None].expand(b, h, n, d)
    got = torch.zeros_like(w_kept).scatter_add_(-1, target, src.float())  # entries merged into each slot
    mass = torch.zeros_like(w_kept).scatter_add_(-1, target, w)
    merged = got > 0

    def fold(kept_x: Tensor, x: Tensor) -> Tensor:
        total = torch.zeros(b, h, kept_x.shape[2], d, device=x.device).scatter_add_(2, idx, x.float() * w[..., None])
        if mode == "add":
            out = kept_x.float() + total
        else:
            den = (w_kept + mass)[..., None]
            out = torch.where(den > 0, (kept_x.float() * w_kept[..., None] + total) / den.clamp(min=1e-30),
                              kept_x.float())
        return torch.where(merged[..., None], out.to(kept_x.dtype), kept_x)

    return (fold(k_kept, keys) if merge_keys else k_kept), fold(v_kept, values)


@register("merge")
@dataclass(frozen=True)
class MergePress(MergingPress, ScoringPress):
    """Evict by ``scorer``, then merge each evicted entry into its most similar kept key, weighted by attention."""

    scorer: ScoringPress | str = "snapkv"  # chooses what is kept; a name becomes the press object
    window: int = 64  # the last queries whose attention weighs the merge
    threshold: float = 0.0  # least cosine similarity to a kept key for an entry to be merged (else dropped)
    mode: str = "mean"  # "mean": attention-weighted mean; "add": CaM's additive merge
    keys: bool = False  # also merge keys (KVMerger); values only (CaM) by default

    query_aware = True  # with the default scorer (SnapKV's window); the merge weights use the window too

    def __post_init__(self) -> None:
        super().__post_init__()
        check_window(self.name, self.window)
        check_range(self.name, "threshold", self.threshold, -1.0, 1.0, hint=" (cosine similarity)")
        if self.mode not in MODES:
            raise ValueError(f"{self.name}: mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        object.__setattr__(self, "scorer", compose_scorer(self, self.scorer))

    def score(self, view: LayerView) -> Tensor:
        assert isinstance(self.scorer, ScoringPress)  # made a press in __post_init__
        return self.scorer.score(view)

    def merge(self, view: LayerView, kept: Tensor, prefix_mask: Tensor) -> tuple[Tensor, Tensor]:
        weight = scoring.group_mean(view.window_attention(self.window).mean(dim=2), view.n_kv_heads)
        return merge_entries(view.keys, view.values, view.valid, kept, prefix_mask, weight, self.threshold,
                             self.mode, bool(self.keys))

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """The scorer's, plus the merge's: the window's queries projected again and their logits against every
        key (the merge weights), and every key's cosine against the ``ceil(keep * n)`` kept ones when something
        is evicted (an upper bound: skipped when no evicted key reaches ``threshold``). Normalizing, the
        weighted sums and the scatter are elementwise."""
        assert isinstance(self.scorer, ScoringPress)
        kept = keep_count(n, self.keep)
        similarity = n * kept * shape.kv_heads * shape.head_dim if kept < n else 0
        return self.scorer.scoring_macs(shape, n) + window_macs(shape, min(self.window, n), n) + similarity
