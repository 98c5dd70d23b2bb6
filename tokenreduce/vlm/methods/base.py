"""What every visual-token method is: a frozen dataclass with one budget, registered by name.

Two stages share one budget, ``keep`` (fraction of each image's visual tokens) or ``tokens`` (count per
image). ``BeforeMethod`` shrinks each image's tokens as they enter the LLM; ``InsideMethod`` drops visual
tokens between decoder layers, rated by attention rebuilt from the previous layer's projections (so SDPA
keeps working). Each method also owns its cost: the tokens every LLM layer processes and the MACs its own
scoring adds (:mod:`..flops` sums them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor, nn

from ...kv.scoring import window_attention, window_keys, window_queries
from ...registry import Registry, check_field_types, check_range, is_int, is_real
from ..flops import DecoderShape, scoring_macs
from ..reduce import keep_top_in_groups


def last_token_attention(attn: nn.Module, x: Tensor, cos: Tensor, sin: Tensor, valid: Tensor | None) -> Tensor:
    """(B, N) attention of the last token over the N tokens in layer ``attn``, heads averaged (FastV's rating),
    rebuilt from the layer's input ``x`` and rotary ``cos``/``sin``."""
    keys = window_keys(attn, x, cos, sin)
    q = window_queries(attn, x[:, -1:], cos[:, -1:], sin[:, -1:])
    return window_attention(q, keys, attn.scaling, valid).mean(1)[:, -1]


@dataclass(frozen=True)
class VisualMethod:
    keep: float | None = None
    tokens: int | None = None

    name: ClassVar[str] = ""
    stage: ClassVar[str] = "before"  # "before" the LLM or "inside" it (reports and docs)
    needs_cls: ClassVar[bool] = False  # ranks by the vision tower's [CLS] attention (or another tower row)
    needs_text: ClassVar[bool] = False  # reads the embeddings of the text after the image (Unit.text)

    def __post_init__(self) -> None:
        if (self.keep is None) == (self.tokens is None):
            raise ValueError(f"{self.name}: give exactly one of keep (fraction in (0, 1]) or tokens (per image)")
        if self.keep is not None:
            if not is_real(self.keep):
                raise ValueError(f"{self.name}: keep must be a real number (finite), got {self.keep!r}")
            check_range(self.name, "keep", self.keep, 0.0, 1.0, low_open=True, hint=" (fraction of visual tokens)")
        if self.tokens is not None and (not is_int(self.tokens) or self.tokens < 1):
            raise ValueError(f"{self.name}: tokens must be a positive int, got {self.tokens!r}")
        check_field_types(self, self.name)  # the other fields (the budget's own messages come first)

    @property
    def thumbnail_guided(self) -> bool:
        """LLaVA-NeXT crop budgets follow the thumbnail's [CLS] attention (a field of some methods)."""
        return bool(getattr(self, "thumbnail_guidance", False))

    def vision_offsets(self, feature_block: int) -> tuple[int, ...]:
        """Vision blocks whose attention the method reads, as offsets from the feature layer's block (0), which
        is block ``feature_block`` of the tower."""
        return (0,)

    def vision_row(self, family: Any, attn: nn.Module, hidden: Tensor) -> Tensor:
        """Per-patch scores (B, patches) from one vision block's attention ``attn`` given its input ``hidden``:
        by default the [CLS] row."""
        return family.cls_attention(hidden, attn)

    def combine_rows(self, rows: list[Tensor]) -> Tensor:
        """One score row per image from the rows of :meth:`vision_offsets`' blocks (by default the only one)."""
        return rows[0] if len(rows) == 1 else torch.stack(rows).mean(0)

    def budget(self, n: int) -> int:
        """Tokens kept out of an image's ``n`` (at least 1, at most n)."""
        k = self.tokens if self.tokens is not None else round(self.keep * n)
        return max(1, min(n, k))

    def token_counts(self, n: int, images: list[tuple[int, int]], depth: int) -> list[int]:
        """Tokens each of ``depth`` LLM layers processes for ``n`` prompt tokens holding ``images`` grids."""
        raise NotImplementedError  # pragma: no cover

    def extra_macs(
        self, shape: DecoderShape, counts: list[int], images: list[tuple[int, int]], text_after: int,
        vision_width: int,
    ) -> int:
        """MACs the method's own scoring adds to a prefill whose layers process ``counts`` tokens."""
        return 0


REGISTRY: Registry[VisualMethod] = Registry("visual-token method", VisualMethod)


def register(cls: type[VisualMethod]) -> type[VisualMethod]:
    """Class decorator registering a visual-token method under its ``name``."""
    return REGISTRY.register(cls.name)(cls)


def vlm_methods() -> list[str]:
    return REGISTRY.names()


def make_vlm_method(method: str | VisualMethod, **params: Any) -> VisualMethod:
    return REGISTRY.make(method, **params)


def cls_row_macs(tokens: int, width: int) -> int:
    """A [CLS] attention row in a vision block of ``width``: the [CLS] query, all keys, their products."""
    return width * width * (1 + tokens) + tokens * width


class Unit(NamedTuple):
    """One image (or LLaVA-NeXT crop) to reduce: embeddings (n, C), token grid, [CLS] scores (n,), budget, and
    (for methods that declare ``needs_text``) the embeddings (t, C) of the row's text after the image."""

    emb: Tensor
    grid: tuple[int, int]
    cls: Tensor | None
    k: int
    text: Tensor | None = None


@dataclass(frozen=True)
class BeforeMethod(VisualMethod):
    """Shrinks each image's tokens before the LLM; every LLM layer sees the shortened sequence."""

    def reduce(self, emb: Tensor, grid: tuple[int, int], cls: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
        """One image's (n, C) tokens -> ascending kept local indices (k,) and their embeddings (k, C)."""
        raise NotImplementedError  # pragma: no cover

    def reduce_all(self, units: list[Unit]) -> list[tuple[Tensor, Tensor]]:
        """:meth:`reduce` for every unit of a forward; methods that batch across images override this."""
        return [self.reduce(u.emb, u.grid, u.cls, u.k) for u in units]

    def kept(self, grid: tuple[int, int]) -> int:
        """Tokens an image of this grid keeps (the budget unless the method rounds it)."""
        return self.budget(grid[0] * grid[1])

    def image_macs(self, n: int, k: int, hidden: int, vision_width: int) -> int:
        """Scoring MACs for one image of ``n`` tokens reduced to ``k``: the [CLS] row if the method reads it."""
        return cls_row_macs(n + 1, vision_width) if self.needs_cls else 0

    def token_counts(self, n, images, depth):
        n_vis = sum(h * w for h, w in images)
        return [n - n_vis + sum(self.kept(g) for g in images)] * depth

    def extra_macs(self, shape, counts, images, text_after, vision_width):
        total = 0
        for h, w in images:
            k = self.budget(h * w)
            if k < h * w:
                total += self.image_macs(h * w, k, shape.hidden, vision_width)
        return total


class Stage(NamedTuple):
    """What an inside-LLM stage sees: the previous layer's attention module with its input ``x`` and rotary
    ``cos``/``sin``, this layer's input ``hidden`` (B, N, C), visual flags and validity of the current tokens,
    each token's group (-1: never dropped), each group's quota and the tokens of each group present (B, G)."""

    attn: nn.Module
    x: Tensor
    cos: Tensor
    sin: Tensor
    hidden: Tensor
    vis: Tensor
    valid: Tensor | None
    group: Tensor
    quota: Tensor
    present: Tensor
    masked: Tensor | None = None  # (B, N) current tokens already masked out (see :class:`Mask`)


class Mask(NamedTuple):
    """What a stage returns to mask tokens out instead of dropping them: (B, N) current tokens that no later
    query attends to. For rows that drop tokens while other rows of the batch keep theirs (a batch stays
    rectangular); the tokens are dropped for real once every row drops them."""

    tokens: Tensor


@dataclass(frozen=True)
class InsideMethod(VisualMethod):
    """Drops visual tokens at decoder layers ``stages(depth)``; ``counts`` says how many stay after each.

    Tokens are rated by :meth:`scores`, by default the last token's attention in the previous layer."""

    stage: ClassVar[str] = "inside"

    @property
    def before_llm(self) -> BeforeMethod | None:
        """A first stage applied to each image before the LLM (multi-stage methods), or None."""
        return None

    def stages(self, depth: int) -> tuple[int, ...]:
        raise NotImplementedError  # pragma: no cover

    def counts(self, n: int, depth: int) -> tuple[int, ...]:
        return tuple(self.budget(n) for _ in self.stages(depth))

    def check(self, depth: int) -> None:
        bad = [s for s in self.stages(depth) if not 1 <= s < depth]
        if bad:
            raise ValueError(f"{self.name}: pruning layers must be in [1, {depth - 1}] for a {depth}-layer LLM: {bad}")

    def keep_mask(self, st: Stage) -> Tensor | Mask | None:
        """(B, N) tokens kept at a stage, or None when no group holds more than its quota: by default each
        group's ``quota`` best by :meth:`scores`. Methods that pick a set rather than rank override this."""
        if bool((st.present <= st.quota).all()):
            return None
        scores = self.scores(st.attn, st.x, st.cos, st.sin, st.vis, st.valid)
        return keep_top_in_groups(st.group, scores, st.quota)

    def scores(self, attn: nn.Module, x: Tensor, cos: Tensor, sin: Tensor, vis: Tensor, valid: Tensor | None) -> Tensor:
        """Rating (B, N) of every current token: the last token's head-averaged attention in layer ``attn``,
        rebuilt from its input ``x`` and rotary ``cos``/``sin``; ``vis`` flags visual tokens."""
        return last_token_attention(attn, x, cos, sin, valid)

    def rating_queries(self, text_after: int) -> int:
        """Queries :meth:`scores` projects, given ``text_after`` tokens after the last image (for MACs)."""
        return 1

    def token_counts(self, n, images, depth):
        n_vis = sum(h * w for h, w in images)
        stages = dict(zip(self.stages(depth), self.counts(n_vis, depth)))
        counts, cur = [], n
        for i in range(depth):
            if i in stages:
                cur = n - n_vis + min(stages[i], n_vis)
            counts.append(cur)
        return counts

    def extra_macs(self, shape, counts, images, text_after, vision_width):
        window = self.rating_queries(text_after)
        stages = [st for st in self.stages(shape.layers) if counts[st] < counts[st - 1]]  # those that dropped
        return sum(scoring_macs(shape, counts[st - 1], window) for st in stages)
