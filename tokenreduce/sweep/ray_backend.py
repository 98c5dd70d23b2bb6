"""Distributed backend: the same points run by Ray actors, results streamed back into the one store.

Only the driver writes to the store (SQLite is a local file); workers return outcomes. Each actor
keeps its loaded model and tasks across the points it runs (one actor per ``cpus_per_point`` CPUs
of the cluster). A local Ray cluster is started by default; ``address`` joins an existing one (its
workers need tokenreduce and the model installed, or a ``runtime_env`` set up by its owner).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from .config import Point
from .measure import Measurer
from .store import Outcome


class _Worker:
    """One Ray actor: measures the points it is sent, one at a time."""

    def __init__(self, data_dir: str | None):
        self.measurer = Measurer(data_dir=data_dir)

    def run(self, point: dict[str, Any]) -> Outcome:
        return self.measurer.run(Point.from_dict(point))


def run_ray(
    points: Sequence[Point],
    data_dir: str | None = None,
    address: str | None = None,
    num_cpus: int | None = None,
    cpus_per_point: float = 1.0,
) -> Iterator[Outcome]:
    """Yield outcomes in completion order; shuts down the Ray connection if this call opened it."""
    try:
        import ray
        from ray.util import ActorPool
    except ImportError as e:
        raise ValueError("--backend ray needs Ray: pip install 'tokenreduce[ray]'") from e
    started = not ray.is_initialized()
    if started:
        kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
        if address:
            kwargs["address"] = address
        elif num_cpus:
            kwargs["num_cpus"] = num_cpus
        try:
            ray.init(**kwargs)
        except Exception as e:  # a bad address, no resources, ...: a user-facing error, not a traceback
            raise ValueError(f"could not {'join Ray at ' + address if address else 'start Ray'}: {e}") from e
    try:
        cpus = ray.cluster_resources().get("CPU", 1.0)
        n = max(1, min(len(points), int(cpus // cpus_per_point)))
        actor = ray.remote(num_cpus=cpus_per_point, max_restarts=0)(_Worker)
        pool = ActorPool([actor.remote(data_dir) for _ in range(n)])
        yield from pool.map_unordered(lambda a, p: a.run.remote(p), [p.to_dict() for p in points])
    finally:
        if started:
            ray.shutdown()
