"""The encoder benchmark's page and recommendation: its rows drawn as the sweep report draws stored points.

``tokenreduce bench --out results/main`` writes ``main.json`` / ``main.csv`` (all rows) and
``main.html`` (+ ``main_accuracy_vs_flops.png``, ``main_accuracy_vs_latency.png``): the same offline page
as ``tokenreduce report`` (scatter with the Pareto front ringed, sortable tables), built from one run.
The recommendation is the fastest measured setting whose primary quality is within the tolerance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .._version import __version__


def _store_rows(result: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Bench rows as the sweep store returns points (what the report renders)."""
    meta, rows = result["meta"], result["rows"]
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    n = meta["timed_texts"]
    out = []
    for r in rows:
        metrics = {k: v for k, v in r.items() if k not in ("method", "config", "params", "pareto")}
        if r.get("time_s") is not None:
            metrics["latency_ms"] = 1000 * r["time_s"] / n
            metrics["base_latency_ms"] = 1000 * r["base_time_s"] / n
        out.append({
            "key": r["config"], "sweep": "bench", "model": meta["model"], "tasks": list(meta["tasks"]),
            "method": r["method"], "label": r["config"], "status": "ok", "error": None, "version": __version__,
            "backend": "local", "finished_at": now, "wall_s": None, "attempts": 1, "params": r.get("params") or {},
            "meta": {k: meta[k] for k in ("primary_quality", "flops_unit", "timing", "memory", "timed_texts")},
            "metrics": metrics, "machine": meta["machine"],
        })
    return out


def write_page(result: Mapping[str, Any], out: str | Path, note: str = "") -> list[Path]:
    """``OUT.html`` (+ the two plots as ``OUT_*.png`` when matplotlib is installed) beside ``OUT.json``."""
    from ..sweep.report import render
    from ..sweep.report_data import groups
    from ..sweep.results import flatten

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = _store_rows(result)
    html = out.with_suffix(".html")
    html.write_text(render(raw, f"tokenreduce bench: {result['meta']['model']}", note))
    paths = [html]
    try:
        from ..sweep.png import write_pngs

        tmp = out.parent / f".{out.name}_png"
        tmp.mkdir(exist_ok=True)
        for p in write_pngs(groups([flatten(r) for r in raw]), tmp):
            target = out.parent / f"{out.name}_{p.name}"
            p.replace(target)
            paths.append(target)
        tmp.rmdir()
    except ValueError:  # matplotlib not installed: the HTML page has its own inline plots
        pass
    return paths


def recommend(rows: Sequence[Mapping[str, Any]], quality: str, max_loss: float) -> dict[str, Any] | None:
    """The fastest reduced row (speedup > 1) whose ``quality`` is within ``max_loss`` (relative) of the
    unreduced row's; ``None`` when no setting is both faster and within the tolerance."""
    base = next(r for r in rows if r["method"] == "none")[quality]
    ok = [r for r in rows if r["method"] != "none" and r.get("speedup", 0) > 1.0
          and r[quality] >= base - max_loss * abs(base)]
    return max(ok, key=lambda r: r["speedup"]) if ok else None


def call(row: Mapping[str, Any] | None) -> str:
    """The line of Python that applies ``row``'s setting."""
    if row is None:
        return "no reduction (no measured setting is both faster and within the tolerance)"
    params = ", ".join(f"{k}={v!r}" for k, v in sorted((row.get("params") or {}).items()))
    return f'tokenreduce.patch(model, "{row["method"]}"{", " + params if params else ""})'
