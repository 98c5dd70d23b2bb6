"""Decode-time compression for long generations (kvpress's DecodingPress idea).

Whenever a row holds ``target + interval`` real entries, it is shrunk back to ``target`` with a scoring
press (``scorer``, key norm by default; it sees only the current token's query as its window). The
prompt is left uncompressed unless ``keep < 1``. Each row is counted on its own (its real entries, not
the batch's padded length), so a row compresses at the same steps, to the same entries, in a batch as
alone. ``DecodingPress(scorer=KeyNorm())`` or ``make_press("decoding", scorer="key_norm")``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from .base import DecodeTimePress, LayerView, ScoringPress, Shape, register
from .common import compose_scorer


@register("decoding")
@dataclass(frozen=True)
class DecodingPress(DecodeTimePress):
    """Keep ``target`` entries per row whenever ``target + interval`` are held, by ``scorer``'s scores."""

    keep_optional = True  # the decode-time budget is ``target``; ``keep`` only compresses the prompt too

    scorer: ScoringPress | str = "key_norm"  # a name becomes the press object at construction
    target: int = 256  # entries kept per row after each decode-time compression
    interval: int = 64  # compress when the cache holds target + interval entries

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.target < 1 or self.interval < 1:
            raise ValueError(f"decoding: target and interval must be >= 1, got {self.target}, {self.interval}")
        object.__setattr__(self, "scorer", compose_scorer(self, self.scorer))

    def score(self, view: LayerView) -> Tensor:  # prefill (only when keep < 1)
        assert isinstance(self.scorer, ScoringPress)  # made a press in __post_init__
        return self.scorer.score(view)

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """The scorer's, for a prefill (``keep < 1``) or a decode-time compression of ``n`` held entries."""
        assert isinstance(self.scorer, ScoringPress)
        return self.scorer.scoring_macs(shape, n)

    def decode_step(self, counts: Tensor) -> tuple[ScoringPress, Tensor] | None:
        """Given each row's real entries ``counts`` (B,) including the token being fed, the scoring press
        (with this press's ``sinks``/``recent``) and per-row entry budgets to compress to now (rows not
        due keep all theirs), or None."""
        due = counts >= self.target + self.interval
        if not bool(due.any()):
            return None
        budgets = torch.where(due, torch.full_like(counts, self.target), counts)
        assert isinstance(self.scorer, ScoringPress)
        return replace(self.scorer, keep=1.0, sinks=self.sinks, recent=self.recent), budgets
