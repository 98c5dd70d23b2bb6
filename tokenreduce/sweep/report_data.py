"""Stored points → plot groups: one group per (model, task set), baseline included, Pareto flags set.

Quality is the first task's primary metric (retrieval MRR or STS Spearman). Cost is the MAC ratio
against the unreduced model and the per-text latency of the timed batches; the baseline's latency
is the median of the baseline timings interleaved with the group's points (as in ``tokenreduce
bench``). A group without a stored ``none`` point gets one from the baseline metrics every point
carries (``base:*``).
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..bench.report import pareto_front

COSTS = (("flops_ratio", "MACs relative to unreduced (FLOPs = 2 x MACs)"), ("latency_ms", "latency per text (ms)"))


@dataclass(frozen=True)
class Group:
    model: str
    tasks: str
    quality: str
    points: list[dict[str, Any]]

    @property
    def methods(self) -> list[str]:
        return sorted({p["method"] for p in self.points}, key=lambda m: (m != "none", m))


def _baseline(points: Sequence[Mapping[str, Any]], quality: str) -> dict[str, Any]:
    src = next((p for p in points if p["method"] == "none"), None)
    base = dict(src) if src else {"method": "none", "label": "none", "flops_ratio": 1.0, "speedup": 1.0}
    if src is None:
        ref = points[0]
        base.update({k[5:]: v for k, v in ref.items() if k.startswith("base:")})
        base["gmacs_per_text"] = ref["gmacs_per_text"] / ref["flops_ratio"] if ref.get("flops_ratio") else None
        base["synthesized"] = True
    lat = [p["base_latency_ms"] for p in points if p.get("base_latency_ms") is not None]
    base["latency_ms"] = statistics.median(lat) if lat else None
    base.setdefault(quality, base.get(f"base:{quality}"))
    return base


def groups(rows: Sequence[Mapping[str, Any]]) -> list[Group]:
    """Successful flat rows (see :func:`tokenreduce.sweep.results.flatten`) grouped for plotting."""
    by: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for r in rows:
        if r["status"] == "ok":
            by.setdefault((r["model"], r["tasks"]), []).append(dict(r))
    out = []
    for (model, tasks), pts in by.items():
        quality = next(p["primary_quality"] for p in pts)
        reduced = [p for p in pts if p["method"] != "none"]
        allp = [_baseline(pts, quality), *reduced] if reduced else pts
        for cost, _ in COSTS:
            neg = [{"g": None if p.get(cost) is None else -p[cost], "q": p.get(quality)} for p in allp]
            for p, flag in zip(allp, pareto_front(neg, "g", "q")):
                p[f"pareto_{cost}"] = flag
        out.append(Group(model, tasks, quality, allp))
    return out
