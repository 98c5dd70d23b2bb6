"""The default backend: points measured one after another in this process (no extra dependency)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

from .config import Point
from .measure import Measurer
from .store import Outcome


def run_local(points: Sequence[Point], data_dir: str | None = None, progress: bool = False) -> Iterator[Outcome]:
    """Yield each point's outcome as soon as it is measured (models and tasks loaded once)."""
    m = Measurer(data_dir=data_dir, progress=progress)
    for p in points:
        yield m.run(p)
