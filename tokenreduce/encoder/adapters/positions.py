"""Positions of reduced tokens, for families whose attention uses relative positions (MPNet, DeBERTa-v2).

Rule: a reduced token keeps the position of its group's *representative*, the earliest original token
merged into it (a token that was only kept keeps its own). Relative-position terms computed once per
forward for positions ``0..N-1`` are then gathered at the representatives, which equals computing them
for tokens at those positions. The source map comes from :func:`runner.record_sources`.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from . import runner


def representatives(src: Tensor, n: int) -> Tensor:
    """(B, n) earliest original position mapped to each of ``n`` slots by the source map ``src`` (B, N0)
    (-1 = dropped). Slots with no source (padding) get position 0: they are masked as keys."""
    b, n0 = src.shape
    pos = torch.arange(n0, device=src.device).expand(b, n0)
    rep = torch.full((b, n + 1), n0, dtype=torch.long, device=src.device)
    rep.scatter_reduce_(1, torch.where(src >= 0, src, n), pos, reduce="amin")
    rep = rep[:, :n]
    return torch.where(rep < n0, rep, 0)


def gather_pairs(full: Tensor, rep: Tensor) -> Tensor:
    """``full[b, ..., rep[b, i], rep[b, j]]`` for a pairwise table ``full`` (B or 1, *, N0, N0) and
    positions ``rep`` (B, n): the table of tokens at positions ``rep``."""
    lead = full.shape[1:-2]
    full = full.expand(rep.shape[0], *lead, *full.shape[-2:])
    view = (rep.shape[0],) + (1,) * len(lead)
    rows = full.gather(-2, rep.view(*view, -1, 1).expand(*full.shape[:-2], -1, full.shape[-1]))
    return rows.gather(-1, rep.view(*view, 1, -1).expand(*full.shape[:-2], rep.shape[1], -1))


@contextmanager
def tracked_sources() -> Iterator[list[runner.SourceRecord]]:
    """Record the source maps of the patched blocks run inside, passing them on to an outer recording.

    Refused while compiling: the runner keeps no records then, so positions could not follow merges.
    """
    if torch.compiler.is_compiling():
        raise RuntimeError(
            "tokenreduce: models whose relative positions follow merges (MPNet, DeBERTa-v2) cannot be compiled"
        )
    outer = runner._RECORD.get()
    with runner.record_sources() as records:
        yield records
    if outer is not None:
        outer.extend(records)
