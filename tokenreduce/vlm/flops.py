"""Prefill multiply-accumulates (MACs) of a decoder LLM at each layer's real token count.

Counts what PyTorch executes (the same convention as ``FlopCounterMode``, with FLOPs = 2 x MACs):
projections, SDPA as a full N x N score matrix and weighted sum (no causal halving), the gated MLP,
the LM head on the rows whose logits are kept, and the scoring cost of inside-LLM methods (the
previous layer's keys recomputed for all tokens, queries for the rating window, and their products).
Each method owns its part (``token_counts``, ``extra_macs``); this module only sums. A test checks the
formula against ``FlopCounterMode`` on a tiny LLaVA.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class DecoderShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int

    @classmethod
    def of(cls, cfg) -> DecoderShape:
        hd = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        return cls(
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_hidden_layers,
            cfg.num_attention_heads,
            cfg.num_key_value_heads,
            hd,
            cfg.vocab_size,
        )


def layer_macs(s: DecoderShape, n: int) -> int:
    proj = n * s.hidden * (2 * s.heads + 2 * s.kv_heads) * s.head_dim
    attn = 2 * n * n * s.heads * s.head_dim
    return proj + attn + 3 * n * s.hidden * s.intermediate


def scoring_macs(s: DecoderShape, n: int, window: int) -> int:
    """Keys for all ``n`` tokens, queries for ``window`` of them, and the window x n products."""
    return (
        n * s.hidden * s.kv_heads * s.head_dim
        + window * s.hidden * s.heads * s.head_dim
        + window * n * s.heads * s.head_dim
    )


class Costed(Protocol):
    """What a visual-token method tells the cost model (every registered method is one)."""

    def token_counts(self, n: int, images: list[tuple[int, int]], depth: int) -> list[int]: ...

    def extra_macs(
        self, shape: DecoderShape, counts: list[int], images: list[tuple[int, int]], text_after: int,
        vision_width: int,
    ) -> int: ...


def token_counts(method: Costed | None, n: int, images: list[tuple[int, int]], depth: int) -> list[int]:
    """Tokens each of ``depth`` layers processes for a sequence of ``n`` tokens holding ``images`` grids."""
    return [n] * depth if method is None else method.token_counts(n, images, depth)


def prefill_macs(
    s: DecoderShape,
    method: Costed | None,
    n: int,
    images: list[tuple[int, int]],
    text_after: int,
    head_rows: int = 1,
    vision_width: int = 0,
) -> int:
    """LLM prefill MACs (all layers, LM head on ``head_rows`` rows) plus the method's own scoring cost.

    ``text_after``: tokens after the last image (text-guided raters); ``vision_width``: the vision tower's
    width, for the [CLS]-attention cost of FasterVLM/VisionZip.
    """
    counts = token_counts(method, n, images, s.layers)
    total = sum(layer_macs(s, c) for c in counts) + head_rows * s.hidden * s.vocab
    if method is not None:
        total += method.extra_macs(s, counts, images, text_after, vision_width)
    return total
