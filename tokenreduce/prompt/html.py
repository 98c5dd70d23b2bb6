"""A self-contained HTML page showing which parts of the original context were kept."""

from __future__ import annotations

import html

from .result import CompressionResult

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;line-height:1.5}"
    "pre{white-space:pre-wrap;font-family:inherit}.k{background:#c8f7c5}.d{color:#aaa;text-decoration:line-through}"
    "table{border-collapse:collapse}td{padding:0 .8rem 0 0}"
)


def render_html(result: CompressionResult, question: str | None = None) -> str:
    """Kept text highlighted, dropped text struck through, with the stats on top."""
    parts = []
    for (s, e), k in zip(result.offsets.tolist(), result.keep.tolist()):
        parts.append((k, result.original[s:e]))
    merged: list[list] = []
    for k, t in parts:
        if merged and merged[-1][0] == k:
            merged[-1][1] += t
        else:
            merged.append([k, t])
    body = "".join(f'<span class="{"k" if k else "d"}">{html.escape(t)}</span>' for k, t in merged)
    stats = "".join(
        f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(str(v))}</td></tr>" for k, v in result.stats().items()
    )
    q = f"<p><b>Question:</b> {html.escape(question)}</p>" if question else ""
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>tokenreduce compress</title>"
        f"<style>{_STYLE}</style></head><body><h1>Prompt compression</h1>{q}<table>{stats}</table>"
        f"<p><span class='k'>kept</span> <span class='d'>dropped</span></p><pre>{body}</pre></body></html>"
    )
