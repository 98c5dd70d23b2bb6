"""Structure protection: character spans that compression must never cut.

Each detector returns ``(start, end)`` character spans of one kind. ``find_protected`` merges them.
Protected spans become atomic pieces (kept whole or dropped whole); the kinds named in ``force`` are
always kept. Speaker labels ("Alice:", "Professor E:") are kept whenever anything of their turn is
kept, so a kept utterance is always attributed.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence

STRUCTURE_KINDS = ("json", "code", "url", "number", "speaker")
_FENCE = re.compile(r"(?ms)^[ \t]*(```|~~~)[^\n]*\n.*?^[ \t]*\1[ \t]*$|`[^`\n]+`")
_URL = re.compile(r"(?:https?://|ftp://|www\.)[^\s<>\"']+")
_NUMBER = re.compile(r"[^\s]*\d[^\s]*")
_SPEAKER = re.compile(r"(?m)^[ \t]*(?:[A-Z][\w.'\-]*(?: [\w.'\-]+){0,3}|\[[^\]\n]{1,40}\]):(?=\s)")
_TRAIL = ".,;:!?)]}'\""


def _trim(text: str, s: int, e: int) -> tuple[int, int]:
    while e > s and text[e - 1] in _TRAIL:
        e -= 1
    return s, e


def code_spans(text: str) -> list[tuple[int, int]]:
    return [m.span() for m in _FENCE.finditer(text)]


def url_spans(text: str) -> list[tuple[int, int]]:
    return [_trim(text, *m.span()) for m in _URL.finditer(text)]


def number_spans(text: str) -> list[tuple[int, int]]:
    """Numbers and IDs: whitespace-delimited strings containing a digit (dates, versions, UUIDs, 1,234.5)."""
    out = []
    for m in _NUMBER.finditer(text):
        s, e = m.span()
        while s < e and text[s] in "([{'\"":
            s += 1
        out.append(_trim(text, s, e))
    return [(s, e) for s, e in out if e > s]


def speaker_spans(text: str) -> list[tuple[int, int]]:
    return [(m.start() + len(m.group()) - len(m.group().lstrip()), m.end()) for m in _SPEAKER.finditer(text)]


def json_spans(text: str, min_chars: int = 8) -> list[tuple[int, int]]:
    """Balanced JSON objects/arrays that parse (``json.JSONDecoder.raw_decode``), outermost only."""
    dec = json.JSONDecoder()
    out: list[tuple[int, int]] = []
    i, n = 0, len(text)
    while i < n:
        j = min((p for p in (text.find("{", i), text.find("[", i)) if p >= 0), default=-1)
        if j < 0:
            break
        try:
            obj, end = dec.raw_decode(text, j)
        except ValueError:
            i = j + 1
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
