"""Prefill multiply-accumulates (MACs) of a decoder LLM at each layer's real token count.

Counts what PyTorch executes (the same convention as ``FlopCounterMode``, with FLOPs = 2 x MACs):
projections, SDPA as a full N x N score matrix and weighted sum (no causal halving), the gated MLP,
the LM head on the rows whose logits are kept, and the scoring cost of inside-LLM methods (the
previous layer's keys recomputed for all tokens, queries for the rating window, and their products).
A test checks this formula against ``FlopCounterMode`` on a tiny LLaVA.
"""

from __future__ import annotations

from dataclasses import dataclass

from .methods import BeforeMethod, InsideMethod, VisualMethod, VisualPool
from .reduce import pool_shape


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


def token_counts(method: VisualMethod | None, n: int, images: list[tuple[int, int]], depth: int) -> list[int]:
    """Tokens each of ``depth`` layers processes for a sequence of ``n`` tokens holding ``images`` grids."""
    n_vis = sum(h * w for h, w in images)
    if method is None:
        return [n] * depth
    if isinstance(method, BeforeMethod):
        kept = 0
        for h, w in images:
            k = method.budget(h * w)
            if isinstance(method, VisualPool) and k < h * w:
                a, b = pool_shape(h, w, k)
                k = a * b
            kept += k
        return [n - n_vis + kept] * depth
    assert isinstance(method, InsideMethod)
    counts, cur = [], n
    stages = dict(zip(method.stages(depth), method.counts(n_vis, depth)))
    for i in range(depth):
        if i in stages:
            cur = n - n_vis + min(stages[i], n_vis)
        counts.append(cur)
    return counts


def before_scoring_macs(method: VisualMethod, images: list[tuple[int, int]], hidden: int, vision_width: int) -> int:
    """What a before-LLM method adds: [CLS] attention rows (q for [CLS], k for all, their product, per image)
    and the similarity products of merging (bipartite rounds; VisionZip's rest x targets)."""
    from .methods import FasterVLM, VisionZip, VisualToMe

    total = 0
    for h, w in images:
        n = h * w
        k = method.budget(n)
        if k >= n:
            continue
        if method.needs_cls:
            t = n + 1
            total += vision_width * vision_width * (1 + t) + t * vision_width
        if isinstance(method, VisualToMe):
            while n > k:
                a, b = (n + 1) // 2, n // 2
                total += a * b * hidden
                n -= min(n - k, a, b)
        elif isinstance(method, VisionZip) and not isinstance(method, FasterVLM):
            kd = min(k, max(1, round(method.dominant * k)))
            kc = min(k - kd, n - kd)
            total += (n - kd - kc) * kc * hidden if kc else 0
    return total


def prefill_macs(
    s: DecoderShape,
    method: VisualMethod | None,
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
    if isinstance(method, BeforeMethod):
        total += before_scoring_macs(method, images, s.hidden, vision_width)
    if isinstance(method, InsideMethod):
        window = 1 if method.window == "last" else text_after
        for st in method.stages(s.layers):
            if counts[st] < counts[st - 1]:
                total += scoring_macs(s, counts[st - 1], window)
    return total
