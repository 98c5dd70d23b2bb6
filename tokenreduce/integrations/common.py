"""Shared by the integrations: one global budget over several documents, then the text per document."""

from __future__ import annotations

from ..prompt.compress import DOC_SEPARATOR
from ..prompt.result import CompressionResult


def split_by_documents(result: CompressionResult, docs: list[str]) -> list[str]:
    """The kept text of each document of a ``compress_prompt(docs, ...)`` result ('' when nothing kept).

    Pieces are assigned to the document holding their first character; the separator between
    documents (a blank line) is not part of any document's text.
    """
    out, pos = [], 0
    bounds = []
    for d in docs:
        bounds.append((pos, pos + len(d)))
        pos += len(d) + len(DOC_SEPARATOR)
    parts: list[list[str]] = [[] for _ in docs]
    k = 0
    for (s, e), keep in zip(result.offsets.tolist(), result.keep.tolist()):
        while k + 1 < len(bounds) and s >= bounds[k + 1][0]:
            k += 1
        if keep:
            a, b = max(s, bounds[k][0]), min(e, bounds[k][1])
            parts[k].append(result.original[a:b])
    for p in parts:
        out.append("".join(p).strip())
    return out
