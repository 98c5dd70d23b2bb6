"""Result rows → terminal table, Pareto front, JSON and CSV; and a description of the machine."""

from __future__ import annotations

import csv
import json
import os
import platform
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    import transformers

    from .. import __version__

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenreduce": __version__,
        "platform": platform.platform(),
    }


def pareto_front(rows: Sequence[dict[str, Any]], gain: str, quality: str) -> list[bool]:
    """Rows no other row beats on both ``gain`` (higher is better) and ``quality`` (higher is better)."""
    flags = []
    for r in rows:
        g, q = r.get(gain), r.get(quality)
        if g is None or q is None:
            flags.append(False)
            continue
        dominated = any(
            o is not r
            and o.get(gain) is not None
            and o.get(quality) is not None
            and o[gain] >= g
            and o[quality] >= q
            and (o[gain] > g or o[quality] > q)
            for o in rows
        )
        flags.append(not dominated)
    return flags


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}" if abs(v) < 10 else f"{v:.1f}"
    return "" if v is None else str(v)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """A plain aligned text table (no terminal library needed)."""
    headers = list(headers or columns)
    cells = [[_fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(h), *(len(row[i]) for row in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    body = ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))) for row in cells]
    return "\n".join([line, sep, *body])


def write_results(result: dict[str, Any], out: str | Path) -> tuple[Path, Path]:
    """Write ``result`` (``{"meta": ..., "rows": [...]}``) as JSON and its rows as CSV beside it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path = out.with_suffix(".json")
    json_path.write_text(json.dumps(result, indent=2, default=str))
    csv_path = out.with_suffix(".csv")
    rows = result["rows"]
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with csv_path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow({k: (json.dumps(v) if isinstance(v, (dict, list)) else v) for k, v in r.items()})
    return json_path, csv_path


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    """The same rows as a Markdown table (for BENCHMARKS.md)."""

    def cell(v: Any) -> str:
        if isinstance(v, bool):
            return "yes" if v else ""
        return _fmt(v)

    lines = ["| " + " | ".join(headers or columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
