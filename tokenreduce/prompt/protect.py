"""Structure protection: character spans that compression must never cut.

Each detector returns ``(start, end)`` character spans of one kind. ``find_protected`` merges them.
Protected spans become atomic pieces (kept whole or dropped whole); the kinds named in ``force`` are
always kept. Speaker labels ("Alice:", "Professor E:"; not a "Title:" heading label) are kept whenever anything
of their turn is kept, so a kept utterance is always attributed.
"""

from __future__ import annotations

import json
import re
from bisect import bisect_left
from collections.abc import Iterable, Sequence

from .segment import HEADING_LINE

STRUCTURE_KINDS = ("json", "code", "url", "number", "speaker")
# code: a fenced block (an opening ``` or ~~~ line, up to the first bare closing line of the same fence) or
# inline `code`. Scanned in one pass with the closing lines looked up by bisection: the single regex
# (?ms)^[ \t]*(```|~~~)[^\n]*\n.*?^[ \t]*\1[ \t]*$|`[^`\n]+` it replaces matches the same spans but
# rescans the rest of the text for every unclosed opening line (quadratic).
_CODE_START = re.compile(r"(?m)^[ \t]*(?:```|~~~)|`[^`\n]+`")
_FENCE_OPEN = re.compile(r"(?m)^[ \t]*(```|~~~)[^\n]*\n")
_FENCE_CLOSE = re.compile(r"(?m)^[ \t]*(```|~~~)[ \t]*$")
_INLINE_CODE = re.compile(r"`[^`\n]+`")
_URL = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"']+")
_WORD = re.compile(r"\S+")
_DIGIT = re.compile(r"\d")
# where a JSON object or array can start (JSON whitespace, then a key / value / closing bracket): positions that
# cannot start one are not handed to the parser, whose error message alone costs O(position) to build
_JSON_OPEN = re.compile(r"\{(?=\s*[\"}])|\[(?=\s*[\[{\"\-0-9\]tfnNI])")
_JSON_CLOSE = re.compile(r"[\]}]")
_SPEAKER = re.compile(r"(?m)^[ \t]*(?:[A-Z][\w.'\-]*(?: [\w.'\-]+){0,3}|\[[^\]\n]{1,40}\]):(?=\s)")
_TRAIL = ".,;:!?)]}'\""


def _trim(text: str, s: int, e: int) -> tuple[int, int]:
    while e > s and text[e - 1] in _TRAIL:
        e -= 1
    return s, e


def code_spans(text: str) -> list[tuple[int, int]]:
    """Fenced code blocks and inline code, leftmost first, a fence preferred to inline code at one position."""
    closers: dict[str, tuple[list[int], list[int]]] = {"```": ([], []), "~~~": ([], [])}
    for m in _FENCE_CLOSE.finditer(text):
        closers[m.group(1)][0].append(m.start())
        closers[m.group(1)][1].append(m.end())
    out: list[tuple[int, int]] = []
    pos = 0
    while m := _CODE_START.search(text, pos):
        p, span = m.start(), None
        if o := _FENCE_OPEN.match(text, p):
            starts, ends = closers[o.group(1)]
            k = bisect_left(starts, o.end())
            span = (p, ends[k]) if k < len(starts) else None
        if span is None and (i := _INLINE_CODE.match(text, p)):
            span = i.span()
        if span is None:
            pos = p + 1
        else:
            out.append(span)
            pos = span[1]
    return out


def url_spans(text: str) -> list[tuple[int, int]]:
    return [_trim(text, *m.span()) for m in _URL.finditer(text)]


def number_spans(text: str) -> list[tuple[int, int]]:
    """Numbers and IDs: whitespace-delimited strings containing a digit (dates, versions, UUIDs, 1,234.5).
    Whole words are tested for a digit (linear; a regex like ``\\S*\\d\\S*`` backtracks quadratically on a
    long word without digits)."""
    out = []
    for m in _WORD.finditer(text):
        s, e = m.span()
        if not _DIGIT.search(text, s, e):
            continue
        while s < e and text[s] in "([{'\"":
            s += 1
        out.append(_trim(text, s, e))
    return [(s, e) for s, e in out if e > s]


def speaker_spans(text: str) -> list[tuple[int, int]]:
    """Speaker labels at line starts; a heading label ("Title: X", :data:`.segment.HEADING_LINE`) is none: its
    line is its document's heading, not a turn (kept by the method's title rule, not with every sentence after it)."""
    return [
        (m.start() + len(m.group()) - len(m.group().lstrip()), m.end())
        for m in _SPEAKER.finditer(text)
        if not HEADING_LINE.match(text, m.start())
    ]


def json_spans(text: str, min_chars: int = 8) -> list[tuple[int, int]]:
    """Balanced JSON objects/arrays that parse (``json.JSONDecoder.raw_decode``), outermost only. Nesting
    too deep for the parser is not JSON here (nothing up to the next closing bracket is protected)."""
    dec = json.JSONDecoder()
    out: list[tuple[int, int]] = []
    i = 0
    while m := _JSON_OPEN.search(text, i):
        j = m.start()
        try:
            obj, end = dec.raw_decode(text, j)
        except ValueError:
            i = j + 1
            continue
        except RecursionError:  # nested deeper than the parser goes: skip to the next closing bracket
            close = _JSON_CLOSE.search(text, j)
            i = close.end() if close else len(text)
            continue
        if end - j >= min_chars and isinstance(obj, (dict, list)) and obj:
            out.append((j, end))
            i = end
        else:
            i = j + 1
    return out


DETECTORS = {"json": json_spans, "code": code_spans, "url": url_spans, "number": number_spans, "speaker": speaker_spans}


def user_spans(text: str, keep: Iterable[str | re.Pattern | tuple[int, int]] | None) -> list[tuple[int, int]]:
    """Spans the user declared: literal strings (every occurrence), compiled regexes, or (start, end)."""
    out: list[tuple[int, int]] = []
    for item in keep or ():
        if isinstance(item, tuple):
            s, e = item
            if not (0 <= s <= e <= len(text)):
                raise ValueError(f"keep span {item} outside the text (length {len(text)})")
            out.append((s, e))
        elif isinstance(item, re.Pattern):
            out += [m.span() for m in item.finditer(text) if m.end() > m.start()]
        elif isinstance(item, str) and item:
            out += [(m.start(), m.end()) for m in re.finditer(re.escape(item), text)]
        else:
            raise TypeError(f"keep items must be non-empty strings, compiled regexes or (start, end), got {item!r}")
    return out


def validate_kinds(kinds: Sequence[str], what: str) -> tuple[str, ...]:
    bad = [k for k in kinds if k not in STRUCTURE_KINDS]
    if bad:
        raise ValueError(f"unknown {what} kind(s) {bad}; valid: {', '.join(STRUCTURE_KINDS)}")
    return tuple(kinds)


def find_protected(text: str, kinds: Sequence[str]) -> dict[str, list[tuple[int, int]]]:
    """``{kind: spans}`` for each requested structure kind."""
    return {k: DETECTORS[k](text) for k in validate_kinds(kinds, "protect")}
