"""Stored points as flat rows: filtering, the summary table, and CSV / Parquet export."""

from __future__ import annotations

import csv
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ..bench.report import format_table
from .store import Store

BASE_COLUMNS = ("label", "model", "tasks", "status", "flops_ratio", "speedup", "mem_ratio")


def flatten(row: Mapping[str, Any]) -> dict[str, Any]:
    """One store row → one flat dict: identity columns, ``param:*``, then every metric by name."""
    out: dict[str, Any] = {
        "key": row["key"][:12],
        "sweep": row["sweep"],
        "model": row["model"],
        "tasks": "+".join(row["tasks"]),
        "method": row["method"],
        "label": row["label"],
        "status": row["status"],
        "error": (row["error"] or "").splitlines()[0] if row["error"] else None,
        "version": row["version"],
        "backend": row["backend"],
        "finished_at": row["finished_at"],
        "wall_s": row["wall_s"],
        "attempts": row["attempts"],
    }
    out.update({f"param:{k}": v for k, v in sorted(row["params"].items())})
    if row["meta"]:
        out["primary_quality"] = row["meta"].get("primary_quality")
    out.update(row["metrics"] or {})
    return out


def _matches(value: Any, want: str) -> bool:
    if value is None:
        return want.lower() in ("", "none", "null")
    try:
        return float(value) == float(want)
    except (TypeError, ValueError):
        return str(value) == want


def parse_where(items: Sequence[str]) -> dict[str, str]:
    """``["method=tome", "param:keep=0.5"]`` → filters (bad items raise ValueError)."""
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k.strip():
            raise ValueError(f"bad filter {item!r}: expected COLUMN=VALUE")
        out[k.strip()] = v.strip()
    return out


def query(store: Store, where: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Flat rows of every stored point matching all ``COLUMN=VALUE`` filters (numbers compare as numbers)."""
    rows = [flatten(r) for r in store.rows()]
    where = where or {}
    if rows and where:
        known = set().union(*rows)
        missing = [k for k in where if k not in known]
        if missing:
            raise ValueError(f"unknown column(s) {missing}; e.g. {', '.join(sorted(known)[:12])}, ...")
    return [r for r in rows if all(_matches(r.get(k), v) for k, v in where.items())]


def summary_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    qual = sorted({r["primary_quality"] for r in rows if r.get("primary_quality")})
    fid = sorted({k for r in rows for k in r if k.endswith(":fidelity_cos")})
    return [*BASE_COLUMNS, *qual, *fid, "wall_s"]


def table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    return format_table(rows, list(columns or summary_columns(rows)))


def _columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    cols: list[str] = []
    for r in rows:
        cols += [k for k in r if k not in cols]
    return cols


def write_csv(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=_columns(rows))
        w.writeheader()
        for r in rows:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()})
    return path


def write_parquet(rows: Sequence[Mapping[str, Any]], path: str | Path) -> Path:
    """Parquet via pyarrow (or pandas, which needs pyarrow or fastparquet itself)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = _columns(rows)
    data = {c: [_cell(r.get(c)) for r in rows] for c in cols}
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        try:
            import pandas as pd
        except ImportError as e:
            raise ValueError("Parquet export needs pyarrow (pip install pyarrow); CSV needs nothing") from e
        pd.DataFrame(data, columns=cols).to_parquet(path)
        return path
    pq.write_table(pa.table(data), path)
    return path


def _cell(v: Any) -> Any:
    return json.dumps(v) if isinstance(v, (list, dict)) else v
