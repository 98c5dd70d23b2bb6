"""Inline SVG scatter plots for the HTML report (no JavaScript library, nothing fetched).

Each point carries ``data-*`` attributes that the report's small script reads for tooltips and
for toggling a method on and off; the Pareto front is drawn as a dashed line with ringed points.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from html import escape
from typing import Any

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22")
BASE_COLOR = "#222222"
W, H, ML, MR, MT, MB = 560, 360, 64, 16, 16, 48


def colors(methods: Sequence[str]) -> dict[str, str]:
    """A stable colour per method (the baseline is always black)."""
    out, i = {}, 0
    for m in methods:
        if m == "none":
            out[m] = BASE_COLOR
        else:
            out[m] = PALETTE[i % len(PALETTE)]
            i += 1
    return out


def nice_ticks(lo: float, hi: float, n: int = 5) -> list[float]:
    """About ``n`` round tick values covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return [0.0]
    if hi <= lo:
        hi = lo + (abs(lo) or 1.0) * 0.1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(lo / step) * step
    return [round(start + i * step, 10) for i in range(int(math.ceil((hi - start) / step)) + 1)]


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def scatter(
    points: Sequence[Mapping[str, Any]],
    x: str,
    y: str,
    xlabel: str,
    ylabel: str,
    color: Mapping[str, str],
    plot_id: str,
) -> str:
    """An SVG scatter of ``points`` (dicts with ``method``, ``label``, ``pareto_<x>``, x and y values)."""
    pts = [p for p in points if p.get(x) is not None and p.get(y) is not None]
    if not pts:
        return f'<p class="empty">no points with {escape(x)} and {escape(y)}</p>'
    xt = nice_ticks(min(p[x] for p in pts), max(p[x] for p in pts))
    yt = nice_ticks(min(p[y] for p in pts), max(p[y] for p in pts))

    def sx(v: float) -> float:
        return ML + (v - xt[0]) / ((xt[-1] - xt[0]) or 1) * (W - ML - MR)

    def sy(v: float) -> float:
        return H - MB - (v - yt[0]) / ((yt[-1] - yt[0]) or 1) * (H - MT - MB)

    out = [f'<svg id="{plot_id}" class="plot" viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img">']
    for t in xt:
        out.append(
            f'<line class="grid" x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{MT}" y2="{H - MB}"/>'
            f'<text class="tick" x="{sx(t):.1f}" y="{H - MB + 16}" text-anchor="middle">{_fmt(t)}</text>'
        )
    for t in yt:
        out.append(
            f'<line class="grid" x1="{ML}" x2="{W - MR}" y1="{sy(t):.1f}" y2="{sy(t):.1f}"/>'
            f'<text class="tick" x="{ML - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>'
        )
    out.append(f'<text class="axis" x="{(ML + W - MR) / 2}" y="{H - 8}" text-anchor="middle">{escape(xlabel)}</text>')
    out.append(
        f'<text class="axis" transform="translate(14 {(MT + H - MB) / 2}) rotate(-90)" '
        f'text-anchor="middle">{escape(ylabel)}</text>'
    )
    front = sorted((p for p in pts if p.get(f"pareto_{x}")), key=lambda p: p[x])
    if len(front) > 1:
        path = " ".join(f"{sx(p[x]):.1f},{sy(p[y]):.1f}" for p in front)
        out.append(f'<polyline class="pareto" points="{path}"/>')
    by_method: dict[str, list[Mapping[str, Any]]] = {}
    for p in pts:
        by_method.setdefault(p["method"], []).append(p)
    for m, group in by_method.items():
        c = color[m]
        out.append(f'<g class="series" data-method="{escape(m)}">')
        if len(group) > 1:
            path = " ".join(f"{sx(p[x]):.1f},{sy(p[y]):.1f}" for p in sorted(group, key=lambda p: p[x]))
            out.append(f'<polyline class="trace" stroke="{c}" points="{path}"/>')
        for p in group:
            ring = ' class="front"' if p.get(f"pareto_{x}") else ""
            out.append(
                f'<circle{ring} cx="{sx(p[x]):.1f}" cy="{sy(p[y]):.1f}" r="5" fill="{c}" '
                f'data-label="{escape(p["label"])}" data-x="{_fmt(p[x])}" data-y="{_fmt(p[y])}"/>'
            )
        out.append("</g>")
    out.append("</svg>")
    return "".join(out)
