"""Exact global budget: choose pieces in priority order so the *re-tokenized* output fits the target.

Token counts of a joined subsequence are not additive (BPE merges across boundaries), so the
controller never trusts per-piece costs: it binary-searches the longest prefix of the priority order
whose joined output, counted by the target tokenizer, is within the target, then tries the next few
pieces one by one to close the remaining gap. Forced pieces are always kept; ``requires[i] = j``
keeps piece j whenever piece i is kept (speaker labels of kept turns).

Two granularities: :func:`fit_budget` fills the budget piece by piece (token level: the last sentence it
reaches may be cut at a word), :func:`fit_sentences` with whole sentences only (the default of sentence
ranking methods), landing at most one sentence under the target.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from .segment import Segmentation, safe_cut

# a unit whose own count exceeds the remaining gap by more than this cannot fit (joining saves at most a token
# or two at each of its two boundaries), so the sentence fill does not re-tokenize to find that out
JOIN_SLACK = 4


@dataclass(frozen=True)
class Fit:
    keep: np.ndarray  # (P,) bool
    tokens: int  # count of the joined output in the target tokenizer
    over_budget: bool  # forced pieces alone exceed the target
    sentence_cut: bool = False  # sentence granularity: no whole sentence fitted, so the best one was trimmed


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
    bound: np.ndarray | None = None,
) -> Fit:
    """Keep-mask over ``seg``'s pieces whose output has at most ``target`` tokens, as close to it as found.

    ``priority``: piece indices, most important first (pieces not listed are dropped unless forced).
    ``order``: output order of pieces (default: original order, i.e. a subsequence).
    ``bound``: (P,) bool, pieces kept whenever any piece of their sentence is (protected spans: a number or an
    ID is never dropped from a sentence that is partly kept).
    """
    n = len(seg)
    base = np.zeros(n, dtype=bool) if forced is None else forced.astype(bool).copy()
    priority = np.asarray(priority, dtype=np.int64)
    priority = priority[~base[priority]]

    def mask(k: int) -> np.ndarray:
        m = base.copy()
        m[priority[:k]] = True
        return _bind(_closure(m, requires), bound, seg.sent)

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
        m = _bind(_closure(m, requires), bound, seg.sent)
        t = tokens(m)
        tries += 1
        if t <= target:
            keep, got = m, t
    return Fit(keep, got, False)


def sentence_units(seg: Segmentation, priority: np.ndarray) -> list[np.ndarray]:
    """The pieces of ``priority`` grouped by sentence, sentences in the order their first piece appears (a
    sentence ranks where its best piece does); pieces keep their priority order inside a unit."""
    priority = np.asarray(priority, dtype=np.int64)
    if not len(priority):
        return []
    sent = seg.sent[priority]
    ids, first = np.unique(sent, return_index=True)
    rank = np.empty(len(ids), dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(len(ids))
    unit_of = rank[np.searchsorted(ids, sent)]
    perm = np.argsort(unit_of, kind="stable")
    return np.split(priority[perm], np.flatnonzero(np.diff(unit_of[perm])) + 1)


def _bind(keep: np.ndarray, bound: np.ndarray | None, group: np.ndarray, by_bound: bool = True) -> np.ndarray:
    """``keep`` plus the ``bound`` pieces of every group (sentence or document id per piece) that has a piece
    kept (``by_bound=False``: a piece that is not itself bound)."""
    if bound is None or not bound.any():
        return keep
    trigger = keep if by_bound else keep & ~bound
    return keep | (bound & np.isin(group, np.unique(group[trigger])))


def fit_sentences(
    seg: Segmentation,
    priority: np.ndarray,
    target: int,
    count: Callable[[str], int],
    forced: np.ndarray | None = None,
    requires: np.ndarray | None = None,
    order: np.ndarray | None = None,
    headings: np.ndarray | None = None,
) -> Fit:
    """Keep-mask of whole sentences (in the priority order of :func:`sentence_units`) whose output has at most
    ``target`` tokens: the longest fitting prefix of units (binary search), then every later unit that still
    fits, in priority order, so each unit left out would not fit (at most one sentence under the target).

    ``headings``: (P,) bool, a document's heading line, never kept alone: it is kept exactly when something
    else of its document is. A speaker label that a kept sentence needs (``requires``) brings its own sentence
    whole ("Alice: Yes." for a kept "The weather is fine." later in Alice's turn). When no whole sentence fits
    at all, the best one is trimmed at token level (:func:`fit_budget` over its pieces) and the fit says
    ``sentence_cut``.
    """
    base = np.zeros(len(seg), dtype=bool) if forced is None else forced.astype(bool).copy()
    priority = np.asarray(priority, dtype=np.int64)
    if headings is not None:
        priority = priority[~headings[priority]]
    units = sentence_units(seg, priority[~base[priority]])

    labels = np.zeros(len(seg), dtype=bool)
    if requires is not None:
        labels[requires[requires >= 0]] = True

    def close(m: np.ndarray) -> np.ndarray:  # a speaker label comes with its turn, and with its whole sentence
        m = _closure(m, requires)
        m = m | np.isin(seg.sent, seg.sent[m & labels])
        return _bind(m, headings, seg.doc, by_bound=False)

    def with_units(m: np.ndarray, idx: list[np.ndarray]) -> np.ndarray:
        m = m.copy()
        for u in idx:
            m[u] = True
        return close(m)

    def tokens(m: np.ndarray) -> int:
        return count(seg.join(m, order))

    keep = close(base)
    got = tokens(keep)
    if got > target:
        return Fit(keep, got, True)
    lo, hi = 0, len(units) + 1  # count(prefix of lo units) <= target < count(prefix of hi units); hi unknown
    while hi - lo > 1:
        mid = (lo + hi) // 2
        m = with_units(base, units[:mid])
        t = tokens(m)
        if t <= target:
            lo, keep, got = mid, m, t
        else:
            hi = mid
    kept_any = lo > 0
    for u in units[lo:]:
        if got >= target:
            break
        m = with_units(keep, [u])
        added = m & ~keep
        if not added.any() or count(seg.join(added)) > target - got + JOIN_SLACK:
            continue  # nothing new, or what it adds, counted alone, is well over the gap
        t = tokens(m)
        if t <= target:
            keep, got, kept_any = m, t, True
    if kept_any or not units:
        return Fit(keep, got, False)
    # not one whole sentence fits: trim the best one at token level (its protected spans bound to it)
    trimmed = fit_budget(seg, units[0], target, count, base, requires, order, bound=seg.atomic)
    keep = close(trimmed.keep)
    got = tokens(keep)
    if got > target:  # its heading or its label's sentence does not fit beside it: the trimmed part only
        keep, got = trimmed.keep, trimmed.tokens
    return Fit(keep, got, False, sentence_cut=bool((keep & ~base).any()))


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
