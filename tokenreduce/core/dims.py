"""Block sizes that determine a transformer block's cost."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelDims:
    """Sizes of one encoder block stack (used by the FLOP counter and by methods' cost models)."""

    hidden: int
    heads: int
    head_dim: int
    ffn: int
    layers: int
    ffn_matrices: int = 2  # 3 for gated MLPs
