"""``tokenreduce report``: one self-contained HTML page (inline SVG, CSS and script) plus the same plots as PNG.

Nothing is loaded from the network: the page works offline, opened straight from disk.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from .report_assets import CSS, JS
from .report_data import COSTS, Group, groups
from .results import flatten
from .store import Store
from .svg import colors, scatter

TABLE_COLS = (
    ("label", "config"),
    ("flops_ratio", "MAC ratio"),
    ("gmacs_per_text", "GMACs/text"),
    ("speedup", "speedup"),
    ("latency_ms", "ms/text"),
    ("mem_ratio", "memory ratio"),
)


def _cell(v: Any) -> str:
    if isinstance(v, bool):
        return "&#9733;" if v else ""
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 100 else f"{v:.1f}"
    return "" if v is None else escape(str(v))


def _table(points: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str]], cls: str = "") -> str:
    head = "".join(f"<th>{escape(h)}</th>" for _, h in cols)
    body = "".join(
        "<tr>" + "".join(f'<td data-v="{escape(str(p.get(c, "")))}">{_cell(p.get(c))}</td>' for c, _ in cols) + "</tr>"
        for p in points
    )
    return f'<table class="sortable {cls}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def _group_html(g: Group, gi: int) -> str:
    col = colors(g.methods)
    legend = "".join(
        f'<button class="toggle" data-method="{escape(m)}" style="border-color:{col[m]}">'
        f'<span class="swatch" style="background:{col[m]}"></span>{escape(m)}</button>'
        for m in g.methods
    )
    plots = "".join(
        f"<figure><figcaption>{escape(g.quality)} vs {escape(label)}</figcaption>"
        f"{scatter(g.points, cost, g.quality, label, g.quality, col, f'plot-{gi}-{cost}')}</figure>"
        for cost, label in COSTS
    )
    extra = sorted({k for p in g.points for k in p if k.endswith(":fidelity_cos") or k == g.quality})
    cols = [
        *TABLE_COLS,
        *((k, k) for k in extra),
        ("pareto_flops_ratio", "Pareto (MACs)"),
        ("pareto_latency_ms", "Pareto (latency)"),
    ]
    tables = "".join(
        f'<h3 class="method" data-method="{escape(m)}"><span class="swatch" style="background:{col[m]}"></span>'
        f"{escape(m)}</h3>"
        + _table(sorted((p for p in g.points if p["method"] == m), key=lambda p: -p["flops_ratio"]), cols)
        for m in g.methods
    )
    return (
        f'<section class="group" id="group-{gi}"><h2>{escape(g.model)} &middot; {escape(g.tasks)}</h2>'
        f'<div class="legend">{legend}<span class="hint">click a method to hide or show it; '
        f"ringed points and the dashed line are the Pareto front</span></div>"
        f'<div class="plots">{plots}</div>{tables}</section>'
    )


def _machines(raw: Sequence[Mapping[str, Any]]) -> str:
    seen: list[dict[str, Any]] = []
    for r in raw:
        if r["machine"] and r["machine"] not in seen:
            seen.append(r["machine"])
    keys = sorted({k for m in seen for k in m})
    return _table(seen, [(k, k) for k in keys], "machines")


def render(raw: Sequence[Mapping[str, Any]], title: str, note: str = "") -> str:
    """The report page for store rows ``raw`` (as returned by :meth:`Store.rows`)."""
    flat = [flatten(r) for r in raw]
    gs = groups(flat)
    failed = [r for r in flat if r["status"] != "ok"]
    metas = [r["meta"] for r in raw if r["meta"]]
    meta = metas[0] if metas else {}
    sweeps = sorted({r["sweep"] for r in raw})
    versions = sorted({r["version"] for r in raw})
    times = sorted(r["finished_at"] for r in raw)
    how = (
        f"Cost: multiply-accumulates counted analytically at each layer's real token count; unit "
        f"{escape(meta.get('flops_unit', ''))}. "
        f"Speedup and latency: {escape(meta.get('timing', ''))}, {meta.get('timed_texts', '?')} texts per timed "
        f"run. Memory: {escape(meta.get('memory', ''))}. Quality is measured on every task's full data; "
        "relative to the unreduced model run in the same process."
    )
    body = "".join(_group_html(g, i) for i, g in enumerate(gs)) or "<p>no successful points stored</p>"
    if failed:
        body += "<h2>Failed points</h2>" + _table(
            failed, [("label", "config"), ("model", "model"), ("tasks", "tasks"), ("error", "error")]
        )
    data = {"methods": sorted({r["method"] for r in flat}), "points": len(flat)}
    payload = json.dumps(data).replace("</", "<\\/")  # never closes the script element early
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>"
        f"<body><h1>{escape(title)}</h1>"
        f'<p class="meta">sweep(s): {escape(", ".join(sweeps))} &middot; {len(flat)} points '
        f"({len(failed)} failed) &middot; tokenreduce {escape(', '.join(versions))} &middot; measured "
        f"{escape(times[0] if times else '')} to {escape(times[-1] if times else '')} &middot; report generated "
        f"{datetime.now(timezone.utc).isoformat(timespec='seconds')}</p>"
        + (f'<p class="note">{escape(note)}</p>' if note else "")
        + f'<p class="how">{how}</p>{body}<h2>Machine and versions</h2>{_machines(raw)}'
        f'<div id="tip" class="tip" hidden></div>'
        f'<script type="application/json" id="report-data">{payload}</script>'
        f"<script>{JS}</script></body></html>"
    )


def write_report(
    store: Store,
    out_dir: str | Path,
    sweep: str | None = None,
    title: str | None = None,
    note: str = "",
    png: bool = True,
) -> list[Path]:
    """Write ``index.html`` (and the plots as PNG) for the stored points (of one sweep, if given)."""
    raw = store.rows("WHERE sweep = ?", (sweep,)) if sweep else store.rows()
    if not raw:
        raise ValueError(f"no stored points{f' for sweep {sweep!r}' if sweep else ''} in {store.path}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = out / "index.html"
    html.write_text(render(raw, title or f"tokenreduce sweep report: {sweep or store.path.stem}", note))
    paths = [html]
    if png:
        from .png import write_pngs

        paths += write_pngs(groups([flatten(r) for r in raw]), out)
    return paths
