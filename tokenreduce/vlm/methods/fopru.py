"""FoPru: Jiang et al., "FoPru: Focal Pruning for Efficient Large Vision-Language Models", arXiv 2411.14164.
Token significance from the vision encoder's attention (what every token attends to each patch), then a global
rank or a row-wise pick; the kept tokens stay in their original order."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from .. import reduce
from .base import BeforeMethod, register

STRATEGIES = ("rank", "row")


def best_rows(scores: torch.Tensor, grid: tuple[int, int], k: int) -> torch.Tensor:
    """Ascending indices of ``k`` tokens of an (h, w) grid: whole rows in order of total significance while
    they fit, the last row partly (its most significant tokens)."""
    h, w = grid
    rows = scores.float().view(h, w)
    order = torch.sort(rows.sum(1), descending=True, stable=True).indices
    full, part = divmod(k, w)
    picked = [(r * w + torch.arange(w, device=scores.device)) for r in order[:full].tolist()]
    if part:
        r = int(order[full])
        picked.append(r * w + reduce.top_k(rows[r], part))
    return torch.sort(torch.cat(picked)).values


@register
@dataclass(frozen=True)
class FoPru(BeforeMethod):
    """FoPru (Jiang et al., arXiv 2411.14164): significance of a patch is the attention it receives in the
    feature layer of the vision tower, averaged over heads and summed over every query ([CLS] included) -- our
    reading of the paper's attention-based significance; the full N x N map is rebuilt from that block's q/k
    (its cost is counted). ``strategy="rank"`` keeps the top
    budget; ``"row"`` keeps the grid rows with the most significance whole (the last one partly), our reading
    of the paper's row strategy, which keeps contiguous spans of the image."""

    strategy: str = "rank"
    name: ClassVar[str] = "fopru"
    needs_cls: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.strategy not in STRATEGIES:
            raise ValueError(f"{self.name}: strategy must be one of {STRATEGIES}, got {self.strategy!r}")

    def vision_row(self, family, attn, hidden):
        return family.received_attention(hidden, attn)

    def reduce(self, emb, grid, cls, k):
        if self.strategy == "rank" or grid[0] * grid[1] != emb.shape[0]:
            return reduce.select(emb, cls, k)
        idx = best_rows(cls, grid, k)
        return idx, emb[idx]

    def image_macs(self, n, k, hidden, vision_width):
        t = n + 1  # with [CLS]: queries and keys of every token, then the full map
        return 2 * t * vision_width * vision_width + t * t * vision_width
