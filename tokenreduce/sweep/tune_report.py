"""``tokenreduce tune``'s output: the recommendation and Pareto table as text, and an offline HTML page.

The page follows the sweep report (:mod:`tokenreduce.sweep.report`): inline SVG scatter with the
Pareto front ringed (speedup vs quality on the tuning split), sortable tables, the same stylesheet
and script, nothing fetched; plus ``tune_pareto.png`` when matplotlib is installed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from html import escape
from pathlib import Path
from typing import Any

from ..bench.report import format_table, pareto_front
from .report_assets import CSS, JS
from .svg import colors, scatter
from .tune import TuneResult

COLUMNS = (("label", "config"), ("flops_ratio", "MAC ratio"), ("speedup", "speedup"),
           ("quality", "quality"), ("loss_pct", "loss %"), ("within", "within tolerance"))
COST_NAMES = {"flops_ratio": "MAC ratio", "kv_bytes_ratio": "KV bytes ratio"}


def columns(res: TuneResult, metric: str) -> list[tuple[str, str]]:
    """(row key, heading) of the tables: the cost column is the result's own (MACs, or KV bytes for presses)."""
    cost = (res.cost_key, COST_NAMES.get(res.cost_key, res.cost_key))
    return [cost if c == "flops_ratio" else (c, metric if c == "quality" else h) for c, h in COLUMNS]

CHECK_COLS = ("label", "tuning", "held", "held_loss_pct", "passes")


def call(pick: Mapping[str, Any] | None, family: str = "encoder") -> str:
    """The recommended line of Python (no reduction: leave the model as it is)."""
    if pick is None:
        return "no reduction: leave the model unpatched" if family == "encoder" else "no press: keep the full cache"
    if family == "kv":
        return (f'tokenreduce.kv.generate(model, tokenizer, context, question, '
                f'press=tokenreduce.kv.make_press("{pick["method"]}", keep={pick["keep"]:g}))')
    return f'tokenreduce.patch(model, "{pick["method"]}", keep={pick["keep"]:g})'


def front(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Measured rows (baseline included) with ``loss_pct`` and their Pareto flag (speedup vs quality)."""
    ok = [{**r, "loss_pct": 100 * r["loss"], "within": "yes" if r["meets"] else "no"} for r in rows if "quality" in r]
    for r, flag in zip(ok, pareto_front(ok, "speedup", "quality")):
        r["pareto_speedup"] = flag
    return ok


def summary(res: TuneResult, metric: str) -> str:
    """The text ``tune`` prints: Pareto table, then the recommendation with its measured figures."""
    rows = front(res.rows)
    cols = [c for c, _ in columns(res, metric)]
    heads = [h for _, h in columns(res, metric)]
    lines = [f"Pareto front on the tuning split (speedup vs {metric}; tolerance: {res.tolerance.describe()}):",
             format_table(sorted((r for r in rows if r["pareto_speedup"]), key=lambda r: r["speedup"]), cols, heads)]
    for c in res.checks:
        h = c["held"]
        if "quality" in h:
            lines.append(f"held-out check {c['label']}: {metric} {h['quality']:.4f} (loss {100 * h['loss']:.2f}%) "
                         f"-> {'passes' if h['meets'] else 'misses the tolerance'}")
    lines.append(f"\nRecommended: {call(res.pick, res.family)}")
    if res.family == "kv" and res.pick is not None:
        lines.append(f'  or: with tokenreduce.kv.apply_press(model, tokenreduce.kv.make_press("{res.pick["method"]}", '
                     f'keep={res.pick["keep"]:g})): model.generate(...)')
    p = res.pick
    if p is not None:
        h = p["held"]
        lines += [
            f"  speedup {p['speedup']:.2f}x on the tuning split, {h['speedup']:.2f}x on the held-out split "
            f"({COST_NAMES.get(res.cost_key, res.cost_key)} {p[res.cost_key]:.3f}; timed interleaved with the "
            f"{'unreduced model' if res.family == 'encoder' else 'full cache'} in this process)",
            f"  {metric}: tuning {p['quality']:.4f} vs {p['base_quality']:.4f} unreduced "
            f"(loss {100 * p['loss']:.2f}%); "
            f"held-out {h['quality']:.4f} vs {h['base_quality']:.4f} (loss {100 * h['loss']:.2f}%)",
        ]
        if h["speedup"] < 1:
            lines.append("  note: the held-out timing is below 1x; the splits disagree (machine load?), "
                         "so re-measure the speedup on a quiet machine before relying on it")
    else:
        lines.append(f"  no measured setting that ran faster than the unreduced model met {res.tolerance.describe()} "
                     "on both the tuning and the held-out split")
    lines.append(f"measured {res.measured} point(s), reused {res.reused} from the store, skipped {res.skipped} "
                 f"dominated; {res.wall_s:.0f} s")
    return "\n".join(lines)


def _table(rows: Sequence[Mapping[str, Any]], cols: Sequence[tuple[str, str]]) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else ""
        return f"{v:.4f}" if isinstance(v, float) else escape("" if v is None else str(v))

    head = "".join(f"<th>{escape(h)}</th>" for _, h in cols)
    body = "".join("<tr>" + "".join(f'<td data-v="{escape(str(r.get(c, "")))}">{cell(r.get(c))}</td>'
                                    for c, _ in cols) + "</tr>" for r in rows)
    return f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render(res: TuneResult, metric: str, title: str, command: str = "") -> str:
    """The tune page: recommendation, Pareto plot, every measured point, the held-out checks, the machine."""
    rows = front(res.rows)
    methods = sorted({r["method"] for r in rows}, key=lambda m: (m != "none", m))
    col = colors(methods)
    legend = "".join(f'<button class="toggle" data-method="{escape(m)}" style="border-color:{col[m]}">'
                     f'<span class="swatch" style="background:{col[m]}"></span>{escape(m)}</button>' for m in methods)
    plot = scatter(rows, "speedup", "quality", "measured speedup vs unreduced", metric, col, "plot-tune")
    heads = columns(res, metric)
    checks = [{"label": c["label"], "tuning": c.get("quality"), "held": c["held"].get("quality"),
               "held_loss_pct": 100 * c["held"]["loss"] if "loss" in c["held"] else None,
               "passes": c["held"].get("meets")} for c in res.checks]
    machine = [{"key": k, "value": v} for k, v in sorted((res.machine or {}).items())]
    data = json.dumps({"methods": methods, "points": len(rows)}).replace("</", "<\\/")
    return (
        f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f"<style>{CSS}</style></head><body><h1>{escape(title)}</h1>"
        f'<p class="meta">generated {datetime.now(timezone.utc).isoformat(timespec="seconds")} &middot; '
        f"tolerance: {escape(res.tolerance.describe())}"
        + (f" &middot; <code>{escape(command)}</code>" if command else "")
        + f'</p><pre class="note" style="white-space:pre-wrap">{escape(summary(res, metric))}</pre>'
        f'<section class="group"><h2>Speedup vs {escape(metric)} (tuning split)</h2>'
        f'<div class="legend">{legend}<span class="hint">ringed points and the dashed line are the Pareto front'
        f'</span></div><div class="plots"><figure>{plot}</figure></div>'
        f"<h2>Every measured point</h2>{_table(sorted(rows, key=lambda r: -r['speedup']), heads)}</section>"
        f"<h2>Held-out checks</h2>{_table(checks, [(k, k) for k in CHECK_COLS])}"
        f"<h2>Machine</h2>{_table(machine, [('key', 'key'), ('value', 'value')])}"
        f'<div id="tip" class="tip" hidden></div><script type="application/json" id="report-data">{data}</script>'
        f"<script>{JS}</script></body></html>"
    )


def _png(rows: Sequence[Mapping[str, Any]], metric: str, path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.2))
    col = colors(sorted({r["method"] for r in rows}, key=lambda m: (m != "none", m)))
    for m, c in col.items():
        pts = sorted((r for r in rows if r["method"] == m), key=lambda r: r["speedup"])
        ax.plot([r["speedup"] for r in pts], [r["quality"] for r in pts], "o", color=c, label=m, alpha=0.85)
    fr = sorted((r for r in rows if r["pareto_speedup"]), key=lambda r: r["speedup"])
    ax.plot([r["speedup"] for r in fr], [r["quality"] for r in fr], "--", color="black", lw=1, label="Pareto front")
    ax.set_xlabel("measured speedup vs unreduced")
    ax.set_ylabel(metric)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_page(res: TuneResult, metric: str, out_dir: str | Path, title: str, command: str = "") -> list[Path]:
    """``DIR/index.html`` (and ``DIR/tune_pareto.png`` with matplotlib); returns the paths written."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    html = out / "index.html"
    html.write_text(render(res, metric, title, command))
    png = _png(front(res.rows), metric, out / "tune_pareto.png")
    return [html] + ([png] if png else [])
