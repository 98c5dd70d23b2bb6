"""ToMe: token merging by bipartite soft matching on attention keys.

Bolya et al., "Token Merging: Your ViT But Faster", ICLR 2023 (arXiv:2210.09461). Merges the
``r`` most similar token pairs per layer, size-weighted, with proportional attention (log-size
key bias) so a merged token keeps the attention mass of the tokens it stands for.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from ...core.dims import ModelDims
from ...core.merge import bipartite_soft_matching
from .base import LayerTensors, Method, Plan, register


@register("tome")
@dataclass(frozen=True)
class ToMe(Method):
    """Merge the most similar token pairs (bipartite soft matching on keys), size-weighted."""

    prop_attn: bool = True
    metric: str = "keys"  # "keys" (ToMe) or "hidden" (the hidden states themselves)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.metric not in ("keys", "hidden"):
            raise ValueError(f"tome: metric must be 'keys' or 'hidden', got {self.metric!r}")

    cap: ClassVar[float] = 0.5

    @property
    def needs(self) -> frozenset[str]:  # type: ignore[override]
        return frozenset({"keys"}) if self.metric == "keys" else frozenset()

    @property
    def proportional_attention(self) -> bool:  # type: ignore[override]
        return self.prop_attn

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:
        feats = t.keys if self.metric == "keys" else t.x
        dst, n_out = bipartite_soft_matching(feats, n_remove, t.sizes > 0, t.protected, t.n_out)
        return Plan(dst, n_out)

    def cost_macs(self, n: int, dims: ModelDims, protected: int) -> int:
        # cosine similarity (head-averaged keys or hidden states) between the A and B halves
        u = n - protected
        return (u - u // 2) * (u // 2) * (dims.head_dim if self.metric == "keys" else dims.hidden)
