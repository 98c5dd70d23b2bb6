"""Decode-time compression for long generations: every ``interval`` generated tokens, shrink the cache
back to ``target`` entries with a scoring press (kvpress's DecodingPress idea; the scorer sees only the
current token's query as its window). The prompt is left uncompressed unless ``prefill_keep < 1``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from torch import Tensor

from .base import LayerView, Press, make_press, register


@register("decoding")
@dataclass(frozen=True)
class DecodingPress(Press):
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

    def at_length(self, n: int) -> Press | None:
        """The press to apply to a cache of ``n`` entries during decoding, or None."""
        if n < self.target + self.interval:
            return None
        return replace(make_press(self.scorer), keep=self.target / n, sinks=self.sinks, recent=self.recent)
