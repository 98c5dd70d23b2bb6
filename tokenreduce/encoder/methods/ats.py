"""ATS: adaptive token sampling by inverse-transform sampling of [CLS]-attention significance.

Fayyaz et al., "Adaptive Token Sampling for Efficient Vision Transformers", ECCV 2022
(arXiv:2111.15667), following the authors' code (github.com/adaptivetokensampling/ATS):

* significance of token j: the [CLS] attention to j summed over heads, times the norm of j's value
  vector (all heads concatenated), normalized over the candidates (the [CLS] row itself excluded);
* candidates sorted by significance (ascending); their cumulative sum, min-max normalized, is the
  CDF; ``K`` evenly spaced points from its smallest non-zero value to 1 each pick the token whose
  CDF is *nearest* (the first on ties); a token picked twice is kept once, so a row keeps *at most*
  ``K`` tokens, and fewer when a few tokens dominate;
* reduction starts a quarter of the way into the network (``start=0.25``: the authors insert ATS in
  blocks 3-11 of the 12-block DeiT). Starting at the first blocks is what made this method lose 34
  points on the bundled digits ViT: there the [CLS] attention of block 1 is concentrated on ~15 of
  64 patches, every inverse-transform sampler (ours and the authors') keeps only those, and the
  model never recovers (docs: BENCHMARKS.md, "ATS against the authors' code").

``K`` is the schedule's nominal count for the layer (from ``keep`` / ``r`` over the reducing
layers): the schedule is an upper bound, and every row keeps at least one unprotected token. The
authors draw as many points as the image had patches, at every layer, with no budget; here ``K``
is capped by the budget so ``keep`` keeps its meaning. The CDF is built from a row's own candidates
(in the authors' code a padded row's CDF starts at 0, a full row's at its smallest score), so a
row's tokens never depend on the rest of its batch.

Rows of one batch then differ in length: they are padded to the longest row (padding has size 0
and is masked), so batched cost and wall time follow the *largest* row; a padded slot costs as
much as a real one. The analytic FLOP counter reports the nominal schedule (an upper bound); pass
the measured widths to :func:`tokenreduce.encoder.cost.encoder_cost` for the exact count.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...core.assign import compact
from ...core.dims import ModelDims
from ...core.schedule import Schedule, per_row, schedule_from
from .base import LayerTensors, Method, MinStep, Plan, register


def significance(cls_attn_heads: Tensor, values: Tensor) -> Tensor:
    """ATS significance (B, N): [CLS] attention summed over heads × norm of the value vector with all
    heads concatenated (the authors' ``score_assignment_step``; normalization is left to the sampler)."""
    b, h, n, d = values.shape
    v_norm = values.float().transpose(1, 2).reshape(b, n, h * d).norm(dim=-1)
    return cls_attn_heads.float().sum(1) * v_norm


def nearest_cdf_sample(scores: Tensor, cand: Tensor, k: Tensor) -> Tensor:
    """The authors' deterministic inverse-transform sampling: keep-mask (B, N).

    Per row, over the candidates only: sort by score ascending (ties by position), cumulative sum,
    min-max normalize to [0, 1]; ``k[b]`` points evenly spaced from the smallest non-zero value to 1
    (one point: 1) each pick the candidate whose normalized CDF is nearest (the lower one on ties).
    Negative scores count as 0; a row whose scores are all 0 samples them as equal; a row with one
    candidate keeps it.
    """
    b, n = scores.shape
    dev = scores.device
    s = torch.where(cand, scores.double().clamp(min=0), 0.0)
    s = torch.where((s.sum(1, keepdim=True) > 0) | ~cand, s, 1.0)  # all-zero rows: equal scores
    order = torch.sort(torch.where(cand, s, -1.0), dim=1, stable=True).indices  # non-candidates first
    count = cand.sum(1)
    first = (n - count).clamp(max=n - 1)[:, None]  # sorted position of the smallest candidate
    cdf = s.gather(1, order).cumsum(1)
    lo, hi = cdf.gather(1, first), cdf[:, -1:]
    span = hi - lo
    ranks = torch.arange(n, device=dev).expand(b, n)
    is_c = ranks >= first
    ncdf = torch.where(is_c, (cdf - lo) / torch.where(span > 0, span, 1.0), -2.0)  # sorted, -2 before
    y0 = torch.where(is_c & (ncdf > 0), ncdf, float("inf")).amin(1, keepdim=True)
    y0 = torch.where(torch.isfinite(y0), y0, 1.0)
    kmax = int(k.max()) if k.numel() else 0
    if kmax == 0:
        return torch.zeros_like(cand)
    i = torch.arange(kmax, device=dev, dtype=torch.float64)[None]
    kk = k.clamp(min=1)[:, None].double()
    pts = torch.where(kk > 1, y0 + i * (1 - y0) / (kk - 1).clamp(min=1), 1.0)  # (B, kmax)
    ncdf = ncdf.contiguous()
    right = torch.searchsorted(ncdf, pts.contiguous(), side="left").clamp(max=n - 1)
    left = (right - 1).clamp(min=0)
    d_right = (ncdf.gather(1, right) - pts).abs()
    d_left = (pts - ncdf.gather(1, left)).abs()
    near = torch.where(d_left <= d_right, left, right)
    near = torch.searchsorted(ncdf, ncdf.gather(1, near).contiguous(), side="left")  # first of equal values
    near = torch.maximum(near, first)  # never a non-candidate (only when the row has one candidate)
    live = (i < k[:, None]) & (count[:, None] > 0)
    hit = torch.zeros(b, n + 1, dtype=torch.bool, device=dev)
    hit.scatter_(1, torch.where(live, near, n), True)
    keep = torch.zeros_like(cand)
    keep.scatter_(1, order, hit[:, :n])
    return keep & cand


@dataclass(frozen=True)
class LateStart:
    """A schedule whose reducing layers begin at ``ceil(start · depth)`` (when no ``layers`` are given)."""

    base: Schedule
    start: float

    def _at(self, num_layers: int) -> Schedule:
        if self.base.layers is not None:
            return self.base
        first = min(math.ceil(self.start * num_layers), num_layers - 1)
        return dataclasses.replace(self.base, layers=tuple(range(max(first, 0), num_layers)))

    def check(self, num_layers: int) -> None:
        self.base.check(num_layers)

    def is_identity(self) -> bool:
        return self.base.is_identity()

    def removals(self, n0: Tensor, num_layers: int, cap: float = 1.0) -> Tensor:
        return per_row(self.removals_static, n0, num_layers, cap)

    def removals_static(self, n0: int, num_layers: int, cap: float = 1.0) -> list[int]:
        return self._at(num_layers).removals_static(n0, num_layers, cap)


@register("ats")
@dataclass(frozen=True)
class ATS(Method):
    """Adaptive token sampling: keep ≤ K tokens drawn by inverse-CDF of [CLS]-attention × ‖value‖."""

    start: float = 0.25  # first reducing layer = ceil(start · depth), unless ``layers`` is given

    needs: ClassVar[frozenset[str]] = frozenset({"cls_attn_heads", "values", "target"})
    cap: ClassVar[float] = 0.9
    drops: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.protected == 0:
            raise ValueError("ats: scores tokens by [CLS] attention, so the [CLS] token must be protected (>= 1)")
        if not 0.0 <= float(self.start) < 1.0:
            raise ValueError(f"ats: start (fraction of the depth before the first reducing layer) must be in [0, 1), "
                             f"got {self.start}")

    def budget(self) -> LateStart | MinStep:  # type: ignore[override]
        base = schedule_from(self.r, self.keep, self.schedule, self.layers, self.min_tokens)
        late = LateStart(base, float(self.start))
        return MinStep(late, float(self.min_step)) if self.min_step else late

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        if t.protected < 1:
            raise ValueError("ats: scores tokens by [CLS] attention, but this model has no protected [CLS] token")
        valid = t.sizes > 0
        pos = torch.arange(valid.shape[1], device=valid.device)
        cand = valid & (pos >= t.protected)
        scores = significance(t.cls_attn_heads, t.values)
        k = t.target.clamp(min=0).to(torch.int64)
        keep = nearest_cdf_sample(scores, cand, k)
        keep = torch.where((n_remove > 0)[:, None], keep, cand)  # rows the schedule leaves alone stay whole
        dst, n_out = compact(keep | (valid & ~cand), valid)
        return Plan(dst, n_out, one_to_one=True)

    def cost_macs(self, n: int, dims: ModelDims, protected: int) -> int:
        return dims.heads * n * dims.head_dim  # q_cls · Kᵀ per head; value norms are not matmuls
