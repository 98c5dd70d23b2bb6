"""Token provenance: which original token each stored entry of a shortened (B, L) layout stands for.

Visual-token pruning (:mod:`tokenreduce.vlm`) and KV presses (:mod:`tokenreduce.kv`) both leave a cache
holding fewer entries than tokens seen, while every later forward still describes *tokens*: a 2D mask
with one column per token seen, positions counting them. :class:`Provenance` is the one record that maps
the two, shared by both families so that reductions compose -- a press selects among the entries
visual pruning left, and masks and positions are rewritten once, from the composed map.

A map covers the first ``length`` stored entries of a layer; entries appended after them are new tokens,
in order, at original positions ``seen``, ``seen + 1``, ... -- so decode steps never update the map.
The maps ride on the cache object, one per layer (:func:`layer_map`, :func:`set_layer_map`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor

_ATTR = "_tokenreduce_provenance"
MIXED = -1  # index of an entry that stands for no single original token (per-head selection, a merge)


@dataclass(frozen=True)
class Provenance:
    """``index`` (B, L): original position of each entry (:data:`MIXED` if none); ``real`` (B, L): entries
    that are tokens, not filler (rows of a batch are left-aligned to a common L); ``seen``: the original
    tokens the L entries stand for."""

    index: Tensor
    real: Tensor
    seen: int

    @classmethod
    def identity(cls, batch: int, n: int, device: torch.device | str | None = None) -> Provenance:
        """n entries that are the first n tokens, unchanged."""
        index = torch.arange(n, device=device).expand(batch, n)
        return cls(index, torch.ones(batch, n, dtype=torch.bool, device=device), n)

    @classmethod
    def pressed(cls, real: Tensor, seen: int) -> Provenance:
        """Entries kept per KV head (each a real token where ``real``, but not the same token in every head)."""
        return cls(torch.full(real.shape, MIXED, dtype=torch.long, device=real.device), real.bool(), seen)

    @property
    def length(self) -> int:
        """Stored entries the map covers (L)."""
        return self.index.shape[1]

    @property
    def prefix_mask(self) -> Tensor:
        """``real`` under the name :mod:`tokenreduce.kv` has always used."""
        return self.real

    def tokens(self, entries: int) -> int:
        """Original tokens that ``entries`` stored entries (the L mapped ones, then new tokens) stand for."""
        return self.seen + entries - self.length

    def select(self, kept: Tensor, real: Tensor | None = None) -> Provenance:
        """The map after keeping entries ``kept`` (B, K) of this layout (``real``: which kept slots are
        tokens; default: the kept entries' own flags). ``seen`` is unchanged: dropping entries forgets no token."""
        index = self.index.gather(1, kept)
        own = self.real.gather(1, kept)
        return Provenance(index, own if real is None else own & real.bool(), self.seen)

    def rewrite_mask(self, mask: Tensor) -> Tensor:
        """A 2D mask (B, T) over all tokens seen (T >= ``seen``) -> (B, L + T - seen) over the L mapped
        entries and the tokens after them. An entry of one token takes that token's column; a mixed entry
        is a real token (presses keep only unmasked ones)."""
        if mask.shape[1] < self.seen:
            raise ValueError("attention mask is shorter than the tokens already in the compressed cache")
        one = mask.gather(1, self.index.clamp(min=0)).bool() & self.real
        prefix = torch.where(self.index >= 0, one, self.real)
        return torch.cat([prefix.to(mask.dtype), mask[:, self.seen :]], dim=1)

    def map_mask(self, mask: Tensor | None, entries: int, q: int) -> Tensor | None:
        """``mask`` for a forward of ``q`` new tokens over ``entries`` stored entries, mapped onto the entries
        once: a mask that already has one column per entry (another hook mapped it) is returned as is."""
        if mask is None or mask.ndim != 2 or mask.shape[1] == entries + q:
            return mask
        return self.rewrite_mask(mask)

    def new_positions(self, entries: int, q: int, device: torch.device | str | None = None) -> Tensor:
        """1-D positions (1, q) of ``q`` new tokens after ``entries`` stored entries: they continue from the
        original token count, not from the (shorter) cache length."""
        start = self.tokens(entries)
        return torch.arange(start, start + q, device=device)[None]

    def kept_positions(self, positions: Tensor) -> Tensor:
        """The caller's positions of all original tokens (..., B, N) -- e.g. M-RoPE's (3, B, N) -- at the
        mapped entries (..., B, L)."""
        if bool((self.index < 0).any()):
            raise ValueError("mixed entries (kept per head) have no single position")
        idx = self.index.expand(*positions.shape[:-2], *self.index.shape)
        return positions.expand(*positions.shape[:-2], self.index.shape[0], positions.shape[-1]).gather(-1, idx)


def layer_maps(cache) -> dict[int, Provenance]:
    """Every layer's map on ``cache`` (empty when nothing shortened it)."""
    return (getattr(cache, _ATTR, None) or {}) if cache is not None else {}


def layer_map(cache, layer: int = 0) -> Provenance | None:
    """The map of ``layer``'s stored entries, or None (the layer holds every token seen, unchanged)."""
    return layer_maps(cache).get(layer)


def set_layer_map(cache, layer: int, prov: Provenance) -> None:
    """Record ``layer``'s map (a new dict each time: shallow cache copies keep their own maps)."""
    object.__setattr__(cache, _ATTR, {**layer_maps(cache), layer: prov})


def set_maps(cache, prov: Provenance, layers: Iterable[int]) -> None:
    """Record one map for all of ``layers`` (presses shorten every layer alike)."""
    object.__setattr__(cache, _ATTR, {**layer_maps(cache), **dict.fromkeys(layers, prov)})
