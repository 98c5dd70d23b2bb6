"""DiffRate-style prune-then-merge with a per-layer schedule found offline.

Chen et al., "DiffRate: Differentiable Compression Rate for Efficient Vision Transformers", ICCV
2023 (arXiv:2305.17997). At each layer tokens are ranked by [CLS] attention (O(N·d), SDPA-friendly);
the ``p`` least important are pruned, then the ``m`` least important of the rest merge into their
most similar (cosine of head-averaged keys) more important token, size-weighted with proportional
attention. DiffRate learns ``(p, m)`` per layer by gradient descent; here the schedule is given:

* ``prune=(...)`` and ``merge=(...)``: tokens pruned / merged at each layer (one entry per layer);
* ``kept=(...)``: unprotected tokens left after each layer (non-increasing), split into pruning
  and merging by ``prune_share``;
* or the usual ``keep`` / ``r`` budget, split by ``prune_share``.

:func:`tokenreduce.encoder.cost.schedule_for_flops` turns a FLOP target into ``prune``/``merge``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...core.dims import ModelDims
from ...core.matching import merge_into, merge_least_important, rank_of
from ...core.schedule import Schedule, per_row
from ...core.scoring import cosine_matrix
from .base import LayerTensors, Method, Plan, register


def _ints(v: object, name: str) -> tuple[int, ...]:
    vals = tuple(v) if isinstance(v, (list, tuple)) else ()
    if not vals or any(isinstance(x, bool) or not isinstance(x, int) or x < 0 for x in vals):
        raise ValueError(f"diffrate: {name} must be a non-empty list of non-negative ints, got {v!r}")
    return vals


@dataclass(frozen=True)
class KeptSchedule:
    """Absolute per-layer targets: a row of ``n0`` tokens loses ``max(0, cur − kept[l])`` at layer l."""

    kept: tuple[int, ...]

    def check(self, num_layers: int) -> None:
        if len(self.kept) != num_layers:
            raise ValueError(f"diffrate: kept has {len(self.kept)} entries but the model has {num_layers} layers")

    def is_identity(self) -> bool:
        return False

    def removals(self, n0: Tensor, num_layers: int, cap: float = 1.0) -> Tensor:
        return per_row(self.removals_static, n0, num_layers, cap)

    def removals_static(self, n0: int, num_layers: int, cap: float = 1.0) -> list[int]:
        out, cur = [], n0
        for i in range(num_layers):
            out.append(min(max(cur - self.kept[i], 0), math.floor(cur * cap)))
            cur -= out[-1]
        return out


@register("diffrate")
@dataclass(frozen=True)
class DiffRate(Method):
    """Prune the least [CLS]-attended tokens, then merge the least important into similar ones."""

    prune: tuple[int, ...] | None = None
    merge: tuple[int, ...] | None = None
    kept: tuple[int, ...] | None = None
    prune_share: float = 0.5
    prop_attn: bool = True

    needs: ClassVar[frozenset[str]] = frozenset({"cls_attn", "keys"})
    cap: ClassVar[float] = 0.9
    drops: ClassVar[bool] = True

    def __post_init__(self) -> None:
        explicit = (self.prune is not None) or (self.merge is not None)
        given = sum([explicit, self.kept is not None, self.r is not None or self.keep is not None])
        if given != 1:
            raise ValueError("diffrate: give exactly one of prune+merge lists, kept targets, or r/keep")
        if explicit:
            p, m = _ints(self.prune, "prune"), _ints(self.merge, "merge")
            if len(p) != len(m):
                raise ValueError(f"diffrate: prune and merge need one entry per layer each, got {len(p)} and {len(m)}")
        if self.kept is not None:
            k = _ints(self.kept, "kept")
            if any(b > a for a, b in zip(k, k[1:])):
                raise ValueError(f"diffrate: kept targets must not increase, got {k}")
        if given_lists := (explicit or self.kept is not None):
            if self.layers is not None or self.min_tokens:
                raise ValueError("diffrate: layers and min_tokens apply to r/keep budgets, not to explicit schedules")
        if not 0.0 <= float(self.prune_share) <= 1.0:
            raise ValueError(f"diffrate: prune_share must be in [0, 1], got {self.prune_share}")
        if self.protected == 0:
            raise ValueError("diffrate: ranks tokens by [CLS] attention, so the [CLS] token must be protected")
        if not given_lists:
            super().__post_init__()

    def budget(self) -> Schedule | KeptSchedule:  # type: ignore[override]
        if self.prune is not None:
            return Schedule(r=tuple(a + b for a, b in zip(self.prune, self.merge)))
        if self.kept is not None:
            return KeptSchedule(tuple(self.kept))
        return super().budget()

    @property
    def proportional_attention(self) -> bool:  # type: ignore[override]
        return self.prop_attn

    def split(self, n_remove: Tensor, layer: int) -> tuple[Tensor, Tensor]:
        """(pruned, merged) counts of this layer for each row's budget."""
        if self.prune is not None:
            p = n_remove.clamp(max=self.prune[layer])
        else:
            p = torch.floor(n_remove.double() * float(self.prune_share)).long()
        return p, n_remove - p

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        pr = t.protected
        valid = t.sizes > 0
        cand = valid[:, pr:]
        importance = t.cls_attn[:, pr:]
        u = cand.sum(1)
        n_p, n_m = self.split(torch.minimum(n_remove, u), t.layer)
        n_m = torch.minimum(n_m, (u - n_p - 1).clamp(min=0))  # merging needs a token to merge into
        pruned = cand & (rank_of(torch.where(cand, importance, float("inf")), descending=False) < n_p[:, None])
        sim = cosine_matrix(t.keys[:, pr:], t.keys[:, pr:])
        merged, partner = merge_least_important(sim, importance, cand & ~pruned, n_m)
        pad = merged.new_zeros(merged.shape[0], pr)
        full = [torch.cat([pad, v], 1) for v in (merged, pruned)]
        dst, n_out = merge_into(valid, full[0], torch.cat([pad.long(), partner + pr], 1), dropped=full[1])
        return Plan(dst, n_out)

    def cost_macs(self, n: int, dims: ModelDims, protected: int) -> int:
        # q_cls · Kᵀ per head, plus all-pairs cosine of head-averaged keys among unprotected tokens
        return dims.heads * n * dims.head_dim + (n - protected) ** 2 * dims.head_dim
