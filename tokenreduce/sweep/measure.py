"""Measure one sweep point with the text-bench machinery, in whatever process runs it.

A point runs :func:`tokenreduce.bench.text_bench.run_text_bench` with its single config, so the
unreduced model is measured in the same process, interleaved with the reduced one: every ratio
(MACs, speedup, memory) is against that baseline, never a stored or hard-coded number. The
baseline's own metrics are kept beside the point's under ``base:`` keys.

Timings are the only non-deterministic outputs (:data:`TIMING_KEYS`); with ``settings.threads``
fixed, everything else is reproducible across processes and backends.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from typing import Any

from .config import BASELINE, Point, is_diffusion
from .store import Outcome, now

TIMING_KEYS = frozenset(
    {
        "speedup",
        "time_s",
        "base_time_s",
        "time_min_s",
        "time_max_s",
        "throughput",
        "base_throughput",
        "latency_ms",
        "base_latency_ms",
    }
)
_META_KEYS = ("tasks", "sources", "timed_texts", "primary_quality", "flops_unit", "timing", "memory", "base_mem_bytes")


def outcome_of(p: Point, metrics_of: Any) -> Outcome:
    """Run ``metrics_of(p)`` -> (metrics, meta, machine) and time it; a failure becomes an outcome holding
    its error (recorded in the store, so a sweep or tune goes on), not an exception."""
    started, t0 = now(), time.perf_counter()
    try:
        metrics, meta, machine = metrics_of(p)
        error = None
    except Exception as e:
        metrics = meta = machine = None
        error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=8)}"
    return Outcome(p.key, p, metrics, meta, machine, error, started, now(), time.perf_counter() - t0)


@dataclass
class Measurer:
    """Measures points; keeps loaded encoders and tasks for the points that follow (per process)."""

    data_dir: str | None = None
    progress: bool = False
    _encoders: dict[tuple[str, int, str], Any] = field(default_factory=dict)
    _tasks: dict[str, Any] = field(default_factory=dict)

    def _encoder(self, p: Point) -> Any:
        from ..bench.encoder import load_text_encoder

        k = (p.model, p.settings["max_length"], p.settings["pooling"])
        if k not in self._encoders:
            self._encoders[k] = load_text_encoder(p.model, pooling=k[2], max_length=k[1])
        return self._encoders[k]

    def _task(self, spec: str) -> Any:
        from ..bench.tasks import load_task

        if spec not in self._tasks:
            self._tasks[spec] = load_task(spec, self.data_dir)
        return self._tasks[spec]

    def metrics(self, p: Point) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(metrics, meta, machine) of one point; raises on failure."""
        import torch

        from ..bench.text_bench import RunConfig, run_text_bench

        s = p.settings
        if is_diffusion(p.tasks):
            from ..diffusion.bench import measure_point

            return measure_point(p.model, p.tasks[0], None if p.method == BASELINE else p.method, dict(p.params),
                                 repeats=s["repeats"], seed=s["seed"], threads=s["threads"], progress=self.progress)
        enc = self._encoder(p)
        tasks = [self._task(t) for t in p.tasks]
        configs = [] if p.method == BASELINE else [RunConfig(p.method, dict(p.params))]
        threads = torch.get_num_threads()
        if s["threads"]:
            torch.set_num_threads(s["threads"])
        try:
            res = run_text_bench(
                enc,
                tasks,
                configs,
                batch_size=s["batch_size"],
                timing_batches=s["timing_batches"],
                repeats=s["repeats"],
                seed=s["seed"],
                progress=self.progress,
            )
        finally:  # the caller's process keeps its own setting
            torch.set_num_threads(threads)
        base, row = res["rows"][0], res["rows"][-1]
        meta = {k: res["meta"][k] for k in _META_KEYS}
        metrics = {k: v for k, v in row.items() if k not in ("method", "config", "params", "pareto")}
        metrics.update({f"base:{k}": v for k, v in base.items() if ":" in k})
        n = meta["timed_texts"]
        if "time_s" in metrics:
            metrics["latency_ms"] = 1000 * metrics["time_s"] / n
            metrics["base_latency_ms"] = 1000 * metrics["base_time_s"] / n
        return metrics, meta, res["meta"]["machine"]

    def run(self, p: Point) -> Outcome:
        """Measure ``p``; a failure is returned as an outcome with its error, not raised."""
        return outcome_of(p, self.metrics)
