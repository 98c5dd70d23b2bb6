"""Run a sweep: skip what the store already holds, measure the rest, record each point as it ends."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from .config import Point, Sweep
from .store import Outcome, Store

BACKENDS = ("local", "ray")


@dataclass
class SweepSummary:
    total: int
    skipped: int = 0
    ok: list[str] = field(default_factory=list)  # keys measured now
    failed: list[str] = field(default_factory=list)


def pending(points: Sequence[Point], store: Store, retry_failed: bool = False) -> list[Point]:
    """Points with no stored row (and stored failures, when retrying)."""
    have = store.statuses()
    return [p for p in points if p.key not in have or (retry_failed and have[p.key] == "failed")]


def _outcomes(
    todo: list[Point],
    backend: str,
    data_dir: str | None,
    ray_address: str | None,
    ray_num_cpus: int | None,
    progress: bool,
) -> Iterator[Outcome]:
    if backend == "local":
        from .local import run_local

        return run_local(todo, data_dir, progress=progress)  # per-point bars below the sweep's
    from .ray_backend import run_ray

    return run_ray(todo, data_dir, address=ray_address, num_cpus=ray_num_cpus)


def run_sweep(
    sweep: Sweep,
    store: Store,
    backend: str = "local",
    retry_failed: bool = False,
    progress: bool = True,
    data_dir: str | None = None,
    ray_address: str | None = None,
    ray_num_cpus: int | None = None,
) -> SweepSummary:
    """Measure every pending point of ``sweep`` with ``backend``, storing each result as soon as it exists."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {', '.join(BACKENDS)}")
    todo = pending(sweep.points, store, retry_failed)
    summary = SweepSummary(total=len(sweep.points), skipped=len(sweep.points) - len(todo))
    if not todo:
        return summary
    bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", unit="point", disable=not progress)
    outcomes = _outcomes(todo, backend, data_dir or sweep.data_dir, ray_address, ray_num_cpus, progress)
    try:
        for out in outcomes:
            store.record(sweep.name, out, backend)
            (summary.ok if out.ok else summary.failed).append(out.key)
            bar.set_postfix_str(f"{out.point.label}: {'ok' if out.ok else 'FAILED'}", refresh=False)
            bar.update(1)
    finally:  # a store error stops the sweep: close the backend now (Ray shuts down), not at garbage collection
        close = getattr(outcomes, "close", None)
        if close is not None:
            close()
        bar.close()
    return summary
