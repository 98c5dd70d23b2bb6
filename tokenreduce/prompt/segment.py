"""Split a text into pieces (words or atomic protected blocks), sentences and documents, with offsets.
Words longer than LONG_WORD characters are cut into shorter pieces (see :func:`split_long_word`).

Pieces partition the text: piece i covers ``text[starts[i]:ends[i]]``, a word with its trailing
whitespace (the first piece also holds any leading whitespace), so any subset of pieces joined in
order is an order-preserving subsequence of the input with words still separated.
"""

from __future__ import annotations

import re
import unicodedata
from bisect import bisect_right
from dataclasses import dataclass

import numpy as np

_WORD = re.compile(r"\S+")
_SENT_END = re.compile(r"[.!?。！？][\"')\]»”’]*$")
# a full stop after these does not end a sentence: initials and dotted abbreviations ("J. R. R. Tolkien",
# "U.S.", "M.Sc.", "e.g.") and abbreviations that precede a name or a number ("Dr. Lee", "vs. Frazier", "No. 5").
# The cost: a sentence that really ends in one ("... in the U.S.") merges with the next.
_ABBREV = re.compile(
    r"^[(\[\"']*(?:[A-Z]|[A-Za-z]{1,3}(?:\.[A-Za-z]{1,3})+|Mr|Mrs|Ms|Dr|Prof|St|Mt|Ft|Sgt|Capt|Col|Gen|Lt|Gov|Sen|"
    r"Rep|Rev|Hon|Messrs|vs|v|No|Nos|Vol|pp|cf|approx|ca|Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec)\.$"
)


def ends_sentence(word: str) -> bool:
    """Whether ``word`` (a whitespace-delimited token) ends a sentence: sentence-final punctuation that is
    not the full stop of an initial or of a common abbreviation."""
    return bool(_SENT_END.search(word)) and not _ABBREV.match(word)


# words longer than LONG_WORD characters (a CJK run without spaces, a minified JSON or base64 blob, an emoji run)
# are cut into pieces of at most CHUNK characters, after CJK sentence ends where there are some, so the budget
# can keep part of them and a whole text that is one such word never has to be dropped whole
LONG_WORD = 64
CHUNK = 16
_CJK_SENT_END = re.compile(r"[。！？][\"')\]»”’]*")


def _joins_previous(text: str, i: int) -> bool:
    """Whether a cut before ``text[i]`` would split a user-perceived character: a combining mark, a variation
    selector, an emoji skin-tone modifier or tag, either side of a zero-width joiner, or inside a flag pair."""
    c, p = text[i], text[i - 1]
    if c == "\u200d" or p == "\u200d" or unicodedata.category(c)[0] == "M":
        return True
    if "\U0001f3fb" <= c <= "\U0001f3ff" or "\U000e0020" <= c <= "\U000e007f":
        return True
    if _regional(c) and _regional(p):
        run = 0
        while i - run - 1 >= 0 and _regional(text[i - run - 1]):
            run += 1
        return run % 2 == 1
    return False


def _regional(c: str) -> bool:
    return "\U0001f1e6" <= c <= "\U0001f1ff"


def safe_cut(text: str, i: int, start: int, end: int) -> int:
    """The first position >= ``i`` in (start, end] where a cut splits no user-perceived character (``end`` if none
    within 8 characters: a pathological run of combining marks is cut anyway)."""
    for j in range(i, min(i + 8, end)):
        if j > start and not _joins_previous(text, j):
            return j
    return end if i + 8 >= end else i


def split_long_word(text: str, s: int, e: int) -> list[tuple[int, int]]:
    """``text[s:e]`` as pieces of at most about CHUNK characters, cut after CJK sentence ends first."""
    if e - s <= LONG_WORD:
        return [(s, e)]
    bounds = [m.end() for m in _CJK_SENT_END.finditer(text, s, e) if m.end() < e] + [e]
    out, a = [], s
    for b in bounds:
        while b - a > CHUNK:
            cut = safe_cut(text, a + CHUNK, a, b)
            out.append((a, cut))
            a = cut
        if b > a:
            out.append((a, b))
            a = b
    return out


_LIST_ITEM = re.compile(r"[-*•#>|]|\d+[.)]\s")
SHORT_LINE = 50
# a labelled heading line: a markdown heading ("## X") or a "Title: X" / "Heading: X" line (the form of the
# benchmark documents). It is one sentence whatever its length: the newline after it always ends a sentence (a long
# one is not hard-wrapped prose) and nothing inside it does ("Title: What's Up? (song)", "## 1. Scope").
HEADING_LINE = re.compile(r"(?im)^[ \t]*(?:#{1,6}[ \t]+|(?:title|heading)[ \t]*:[ \t]*)\S[^\n]*")


def heading_lines(text: str) -> list[tuple[int, int]]:
    """``(start, end)`` of each labelled heading line (:data:`HEADING_LINE`), its newline excluded."""
    return [m.span() for m in HEADING_LINE.finditer(text)]


def _line_break(text: str, gap_start: int, next_start: int) -> bool:
    """A newline ends a sentence unless it looks like hard-wrapped prose: the line before is long
    (>= SHORT_LINE characters) and the next line does not start a list item, heading or table row."""
    nl = text.find("\n", gap_start, next_start)
    if nl < 0:
        return False
    line_start = text.rfind("\n", 0, gap_start) + 1
    if gap_start - line_start < SHORT_LINE:
        return True
    return bool(_LIST_ITEM.match(text, next_start))


@dataclass(frozen=True)
class Segmentation:
    text: str
    starts: np.ndarray  # (P,) int64
    ends: np.ndarray  # (P,) int64
    sent: np.ndarray  # (P,) sentence id, non-decreasing
    doc: np.ndarray  # (P,) document id, non-decreasing
    atomic: np.ndarray  # (P,) bool: piece is a merged protected block

    def __len__(self) -> int:
        return len(self.starts)

    def piece(self, i: int) -> str:
        return self.text[self.starts[i] : self.ends[i]]

    def join(self, keep: np.ndarray, order: np.ndarray | None = None) -> str:
        idx = np.flatnonzero(keep) if order is None else order[keep[order]]
        t, s, e = self.text, self.starts, self.ends
        return "".join(t[s[i] : e[i]] for i in idx)

    def split(self, piece: int, at: int) -> Segmentation:
        """This segmentation with ``piece`` cut in two at character ``at`` (both halves in its sentence)."""
        return Segmentation(
            self.text,
            np.insert(self.starts, piece + 1, at),
            np.insert(self.ends, piece, at),
            np.insert(self.sent, piece, self.sent[piece]),
            np.insert(self.doc, piece, self.doc[piece]),
            np.insert(self.atomic, piece, self.atomic[piece]),
        )

    def sentence_texts(self) -> list[str]:
        bounds = np.flatnonzero(np.r_[True, self.sent[1:] != self.sent[:-1]])
        stops = np.r_[bounds[1:], len(self)]
        return [self.text[self.starts[a] : self.ends[b - 1]].strip() for a, b in zip(bounds, stops)]


def segment(text: str, protected: list[tuple[int, int]], doc_starts: list[int] | None = None) -> Segmentation:
    """Pieces, sentence and document ids. Words overlapping a protected span merge into one atomic piece;
    sentences never end inside one. Documents start at ``doc_starts`` (character offsets) or at blank lines."""
    words = [p for m in _WORD.finditer(text) for p in split_long_word(text, *m.span())]
    words = words or ([(0, len(text))] if text else [])
    if not words:
        z = np.zeros(0, dtype=np.int64)
        return Segmentation(text, z, z, z, z, np.zeros(0, dtype=bool))
    ws = np.array([w[0] for w in words], dtype=np.int64)
    we = np.array([w[1] for w in words], dtype=np.int64)
    # group words: a word joins the previous group when a protected span covers the gap between them
    join = np.zeros(len(words), dtype=bool)
    touched = np.zeros(len(words), dtype=bool)
    for s, e in protected:
        if e <= s:
            continue
        a = np.searchsorted(we, s, side="right")  # first word ending after s
        b = np.searchsorted(ws, e, side="left")  # words starting before e
        if b > a:
            touched[a:b] = True
            join[a + 1 : b] = True
    first = np.flatnonzero(~join)
    last = np.r_[first[1:], len(words)] - 1
    starts = ws[first].copy()
    starts[0] = 0
    ends = np.r_[ws[first[1:]], len(text)]
    atomic = np.logical_or.reduceat(touched, first)
    # sentence / document boundaries before each piece, from the previous piece's last word and the gap
    wfirst = ws[first]
    if doc_starts is not None:
        k = np.searchsorted(np.array(sorted(doc_starts), dtype=np.int64), wfirst, side="right")
        doc_b = np.r_[False, k[1:] != k[:-1]]
    else:
        doc_b = np.array([False] + [text.count("\n", we[last[p - 1]], wfirst[p]) >= 2 for p in range(1, len(first))])
    heads = heading_lines(text)
    head_starts = [s for s, _ in heads]

    def boundary(p: int) -> bool:
        gap, nxt = int(we[last[p - 1]]), int(wfirst[p])
        k = bisect_right(head_starts, gap - 1) - 1
        if k >= 0 and gap <= heads[k][1]:  # the previous word ends a heading line or lies inside one
            return nxt >= heads[k][1]
        return _line_break(text, gap, nxt) or ends_sentence(text[ws[last[p - 1]] : gap])

    sent_b = doc_b | np.array([False] + [boundary(p) for p in range(1, len(first))])
    return Segmentation(text, starts, ends, np.cumsum(sent_b), np.cumsum(doc_b), atomic)
