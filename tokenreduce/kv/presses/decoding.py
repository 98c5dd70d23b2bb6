"""Decode-time compression for long generations: whenever a row holds ``target + interval`` real entries,
shrink it back to ``target`` with a scoring press (kvpress's DecodingPress idea; the scorer sees only the
current token's query as its window). The prompt is left uncompressed unless ``keep < 1``.

Each row is counted on its own (its real entries, not the batch's padded length), so a row compresses
at the same steps, to the same entries, in a batch as alone.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .base import LayerView, Press, make_press, register


@register("decoding")
@dataclass(frozen=True)
class DecodingPress(Press):
    decodes = True

    scorer: str = "key_norm"
    target: int = 256  # entries kept per row after each decode-time compression
    interval: int = 64  # compress when the cache holds target + interval entries

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target < 1 or self.interval < 1:
            raise ValueError(f"decoding: target and interval must be >= 1, got {self.target}, {self.interval}")
        if self.scorer in ("decoding", "adakv", "pyramidkv"):
            raise ValueError(f"decoding: scorer must be a dense press, got {self.scorer!r}")
        make_press(self.scorer)

    def score(self, view: LayerView) -> Tensor:  # prefill (only when keep < 1)
        return make_press(self.scorer, keep=self.keep).score(view)

    def decode_step(self, counts: Tensor) -> tuple[Press, Tensor] | None:
        """Given each row's real entries ``counts`` (B,) including the token being fed, the scoring press
        and per-row entry budgets to compress to now (rows not due keep all theirs), or None."""
        due = counts >= self.target + self.interval
        if not bool(due.any()):
            return None
        budgets = torch.where(due, torch.full_like(counts, self.target), counts)
        return replace(make_press(self.scorer), sinks=self.sinks, recent=self.recent), budgets
