"""Exact global budget: choose pieces in priority order so the *re-tokenized* output fits the target.

Token counts of a joined subsequence are not additive (BPE merges across boundaries), so the
controller never trusts per-piece costs: it binary-searches the longest prefix of the priority order
whose joined output, counted by the target tokenizer, is within the target, then tries the next few
pieces one by one to close the remaining gap. Forced pieces are always kept; ``requires[i] = j``
keeps piece j whenever piece i is kept (speaker labels of kept turns).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .segment import Segmentation, safe_cut


@dataclass(frozen=True)
class Fit:
    keep: np.ndarray  # (P,) bool
    tokens: int  # count of the joined output in the target tokenizer
    over_budget: bool  # forced pieces alone exceed the target


def _closure(keep: np.ndarray, requires: np.ndarray | None) -> np.ndarray:
    if requires is None:
        return keep
    need = requires[keep & (requires >= 0)]
    if need.size:
        keep = keep.copy()
        keep[need] = True
    return keep


def fit_budget(
    seg: Segmentation,
    priority: np.ndarray,
    target: int,
    count: Callable[[str], int],
    forced: np.ndarray | None = None,
    requires: np.ndarray | None = None,
    order: np.ndarray | None = None,
    max_fill_tries: int = 16,
) -> Fit:
    """Keep-mask over ``seg``'s pieces whose output has at most ``target`` tokens, as close to it as found.

    ``priority``: piece indices, most important first (pieces not listed are dropped unless forced).
    ``order``: output order of pieces (default: original order, i.e. a subsequence).
    """
    n = len(seg)
    base = np.zeros(n, dtype=bool) if forced is None else forced.astype(bool).copy()
    priority = np.asarray(priority, dtype=np.int64)
    priority = priority[~base[priority]]

    def mask(k: int) -> np.ndarray:
        m = base.copy()
        m[priority[:k]] = True
        return _closure(m, requires)

    def tokens(m: np.ndarray) -> int:
        return count(seg.join(m, order))

    lo_mask = mask(0)
    lo_tokens = tokens(lo_mask)
    if lo_tokens > target:
        return Fit(lo_mask, lo_tokens, True)
    full = mask(len(priority))
    full_tokens = tokens(full)
    if full_tokens <= target:
        return Fit(full, full_tokens, False)
    lo, hi = 0, len(priority)  # invariant: count(mask(lo)) <= target < count(mask(hi))
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m = mask(mid)
        t = tokens(m)
        if t <= target:
            lo, lo_mask, lo_tokens = mid, m, t
        else:
            hi = mid
    keep, got = lo_mask, lo_tokens
    tries = 0
    for i in priority[lo:]:
        if got >= target or tries >= max_fill_tries:
            break
        if keep[i]:
            continue
        m = keep.copy()
        m[i] = True
        m = _closure(m, requires)
        t = tokens(m)
        tries += 1
        if t <= target:
            keep, got = m, t
    return Fit(keep, got, False)


def longest_prefix(text: str, start: int, end: int, target: int, count: Callable[[str], int]) -> int:
    """The largest ``cut`` in [start, end] with ``count(text[start:cut]) <= target`` (binary search: counts of
    prefixes grow with their length), moved back so it splits no user-perceived character."""
    lo, hi = start, end + 1  # count(text[start:lo]) <= target < count(text[start:hi]) (hi = end + 1: unknown)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(text[start:mid]) <= target:
            lo = mid
        else:
            hi = mid
    while start < lo < end and safe_cut(text, lo, start, end) != lo:
        lo -= 1
    return lo


def fit_inside(seg: Segmentation, piece: int, target: int, count: Callable[[str], int]) -> tuple[Segmentation, Fit]:
    """When no whole piece fits: keep the longest prefix of ``piece`` that does, cut at a character. If not
    even its first character fits, that character is kept over budget: the output is never empty."""
    s, e = int(seg.starts[piece]), int(seg.ends[piece])
    cut = longest_prefix(seg.text, s, e, target, count)
    if cut == s:
        cut = safe_cut(seg.text, s + 1, s, e)
    if cut < e:
        seg = seg.split(piece, cut)
    keep = np.zeros(len(seg), dtype=bool)
    keep[piece] = True
    tokens = count(seg.text[s:cut])
    return seg, Fit(keep, tokens, tokens > target)
