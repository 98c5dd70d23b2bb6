"""PiToMe: merge high-energy (redundant) tokens, protect isolated low-energy ones.

Tran et al., "Accelerating Transformers with Spectrum-Preserving Token Merging", NeurIPS 2024
(arXiv:2405.16148). Energy of a token = mean over tokens of ELU(cos − m) on head-averaged keys,
with a margin that falls with depth, ``m = margin · (1 − layer / num_layers)`` (0.9 by default, as
in the paper). The ``2r`` highest-energy tokens are split alternately by energy rank into A and B,
and every A token merges into its most similar B token (size-weighted, proportional attention),
so exactly ``r`` tokens go per layer (at most half the unprotected tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from ...core.dims import ModelDims
from ...core.matching import energy_merge, merge_into
from ...core.scoring import cosine_matrix, pitome_energy
from .base import LayerTensors, Method, Plan, register


@register("pitome")
@dataclass(frozen=True)
class PiToMe(Method):
    """Energy-guided merging: bipartite matching among the most redundant (high-energy) tokens."""

    margin: float = 0.9
    alpha: float = 1.0
    prop_attn: bool = True

    needs: ClassVar[frozenset[str]] = frozenset({"keys"})
    cap: ClassVar[float] = 0.5

    def __post_init__(self) -> None:
        super().__post_init__()
        if not -1.0 <= float(self.margin) <= 1.0 or float(self.alpha) <= 0:
            raise ValueError(f"pitome: margin must be in [-1, 1] and alpha > 0, got {self.margin}, {self.alpha}")

    @property
    def proportional_attention(self) -> bool:  # type: ignore[override]
        return self.prop_attn

    def layer_margin(self, layer: int, num_layers: int) -> float:
        return float(self.margin) * (1.0 - layer / max(num_layers, 1))

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        p = t.protected
        valid = t.sizes > 0
        cand = valid[:, p:]
        r = torch.minimum(n_remove, cand.sum(1) // 2)
        sim = cosine_matrix(t.keys[:, p:], t.keys[:, p:])
        energy = pitome_energy(sim, cand, self.layer_margin(t.layer, t.num_layers), self.alpha)
        merged, partner = energy_merge(sim, energy, cand, r)
        pad = merged.new_zeros(merged.shape[0], p)
        dst, n_out = merge_into(valid, torch.cat([pad, merged], 1), torch.cat([pad.long(), partner + p], 1))
        return Plan(dst, n_out)

    def cost_macs(self, n: int, dims: ModelDims, protected: int) -> int:
        return (n - protected) ** 2 * dims.head_dim  # all-pairs cosine of head-averaged keys
