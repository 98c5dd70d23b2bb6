"""ATS: adaptive token sampling by inverse-transform sampling of [CLS]-attention significance.

Fayyaz et al., "Adaptive Token Sampling for Efficient Vision Transformers", ECCV 2022
(arXiv:2111.15667). Each token's significance is its [CLS] attention times the norm of its value
(summed over heads; no N×N matrix is needed, so SDPA keeps working). At a reducing layer, ``K``
evenly spaced quantiles of the significance CDF each pick a token (deterministic, as at the paper's
inference); a token picked twice is kept once, so an image keeps *at most* ``K`` tokens and fewer
when a few tokens dominate. ``K`` is the schedule's nominal count for the layer (from ``keep`` /
``r``): the schedule is an upper bound, and every row keeps at least one unprotected token.

Rows of one batch then differ in length: they are padded to the longest row (padding has size 0
and is masked), so batched cost and wall time follow the *largest* row; a padded slot costs as
much as a real one. The analytic FLOP counter reports the nominal schedule (an upper bound); pass
the measured widths to :func:`tokenreduce.encoder.cost.encoder_cost` for the exact count.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...core.assign import compact
from ...core.dims import ModelDims
from ...core.scoring import ats_significance, inverse_cdf_sample
from .base import LayerTensors, Method, Plan, register


@register("ats")
@dataclass(frozen=True)
class ATS(Method):
    """Adaptive token sampling: keep ≤ K tokens drawn by inverse-CDF of [CLS]-attention × ‖value‖."""

    needs: ClassVar[frozenset[str]] = frozenset({"cls_attn_heads", "values", "target"})
    cap: ClassVar[float] = 0.9
    drops: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.protected == 0:
            raise ValueError("ats: scores tokens by [CLS] attention, so the [CLS] token must be protected (>= 1)")

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        if t.protected < 1:
            raise ValueError("ats: scores tokens by [CLS] attention, but this model has no protected [CLS] token")
        valid = t.sizes > 0
        pos = torch.arange(valid.shape[1], device=valid.device)
        cand = valid & (pos >= t.protected)
        scores = ats_significance(t.cls_attn_heads, t.values)
        k = t.target.clamp(min=0).to(torch.int64)
        keep = inverse_cdf_sample(scores, cand, k)
        keep = torch.where((n_remove > 0)[:, None], keep, cand)  # rows the schedule leaves alone stay whole
        dst, n_out = compact(keep | (valid & ~cand), valid)
        return Plan(dst, n_out, one_to_one=True)

    def cost_macs(self, n: int, dims: ModelDims, protected: int) -> int:
        return dims.heads * n * dims.head_dim  # q_cls · Kᵀ per head; value norms are not matmuls
