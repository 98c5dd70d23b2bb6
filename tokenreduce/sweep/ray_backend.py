"""Distributed backend: the same points run by Ray actors, results streamed back into the one store.

Only the driver writes to the store (SQLite is a local file); workers return outcomes. Each actor
keeps its loaded model and tasks across the points it runs (one actor per ``cpus_per_point`` CPUs
of the cluster). A local Ray cluster is started by default; ``address`` joins an existing one (its
workers need tokenreduce and the model installed, or a ``runtime_env`` set up by its owner).

A local cluster is started small (no dashboard, no log forwarding, a 128 MB object store: outcomes
are small and travel inline) and shut down when the sweep ends, fails, or the driver gets SIGTERM
or Ctrl-C. A SIGKILLed driver cannot clean up: Ray's raylet, GCS and idle workers follow it within
seconds, but its two agent processes (``ray::DashboardAgent``, ``ray::RuntimeEnvAgent``, ~200 MB)
stay about 60 s (measured with Ray 2.60) before they exit on their own.
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, nullcontext
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


OBJECT_STORE_BYTES = 128 * 1024**2


@contextmanager
def _sigterm_shuts_down(ray: Any) -> Iterator[None]:
    """While Ray runs, SIGTERM shuts it down, then exits 143 (main thread only).

    Exiting at once is as safe for the store as a SIGKILL (a half-written point rolls back), and
    unlike unwinding with SystemExit it cannot abort in Ray's threads at interpreter exit.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _exit(signum: int, frame: object) -> None:
        ray.shutdown()
        os._exit(128 + signum)

    old = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def _init_kwargs(address: str | None, num_cpus: int | None) -> dict[str, Any]:
    """ray.init arguments: join ``address``, or start the smallest local cluster the actors need."""
    kwargs: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        return {**kwargs, "address": address}
    kwargs.update(object_store_memory=OBJECT_STORE_BYTES, num_gpus=0)
    if num_cpus:
        kwargs["num_cpus"] = num_cpus
    return kwargs


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
        try:
            ray.init(**_init_kwargs(address, num_cpus))
        except Exception as e:  # a bad address, no resources, ...: a user-facing error, not a traceback
            raise ValueError(f"could not {'join Ray at ' + address if address else 'start Ray'}: {e}") from e
    try:  # the handler goes in after ray.init, which sets its own
        with _sigterm_shuts_down(ray) if started else nullcontext():
            yield from _map(ray, ActorPool, points, data_dir, cpus_per_point)
    finally:
        if started:
            ray.shutdown()


def _map(
    ray: Any, pool_cls: Any, points: Sequence[Point], data_dir: str | None, cpus_per_point: float
) -> Iterator[Outcome]:
    """Outcomes of ``points`` from one actor per ``cpus_per_point`` CPUs, in completion order."""
    cpus = ray.cluster_resources().get("CPU", 1.0)
    n = max(1, min(len(points), int(cpus // cpus_per_point)))
    actor = ray.remote(num_cpus=cpus_per_point, max_restarts=0)(_Worker)
    pool = pool_cls([actor.remote(data_dir) for _ in range(n)])
    yield from pool.map_unordered(lambda a, p: a.run.remote(p), [p.to_dict() for p in points])
