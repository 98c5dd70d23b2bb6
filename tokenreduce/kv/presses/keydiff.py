"""KeyDiff: keep the keys least similar to the layer's mean key direction.

J. Park, D. Jones, M. J. Morse, R. Goel, M. Lee, C. Lott, "KeyDiff: Key Similarity-Based KV Cache Eviction
for Long-Context LLM Inference in Resource-Constrained Environments", arXiv:2504.15364 (2025). Keys that
point away from the anchor (the mean of the row's unit-normalized real keys, per KV head) are the ones
attention can single out; keys close to it carry little that the rest do not. Needs no attention and no
query, so it works with any attention implementation and as a scorer (``AdaKV(scorer=KeyDiff())``).
The paper evicts block by block while prefilling; here the whole prefill is scored at once (as kvpress's
``KeyDiffPress``; chunked prefill gives the block-wise form).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch.nn.functional as F
from torch import Tensor

from .base import LayerView, ScoringPress, Shape, register


@register("keydiff")
@dataclass(frozen=True)
class KeyDiff(ScoringPress):
    """Minus the cosine similarity of each key to its row's mean unit key (per KV head; padding excluded)."""

    def score(self, view: LayerView) -> Tensor:
        unit = F.normalize(view.keys.float(), dim=-1)  # (B, Hkv, N, D)
        w = view.valid[:, None, :, None].float()
        anchor = (unit * w).sum(2, keepdim=True) / w.sum(2, keepdim=True).clamp(min=1.0)
        return -F.cosine_similarity(unit, anchor, dim=-1)

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """0: no matmul. Normalizing the keys, the anchor and the cosines are elementwise (about ``3 * n *
        head_dim`` multiply-adds per KV head), not counted, as key norms are not."""
        return 0
