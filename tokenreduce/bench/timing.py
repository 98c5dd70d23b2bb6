"""Wall-clock timing: warm-up, then the median and spread of repeated runs.

Ratios against a baseline are taken from runs interleaved with the baseline's (A, B, A, B, ...),
so drift in machine load hits both sides alike.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_s: float
    min_s: float
    max_s: float
    runs: int

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def _once(fn: Callable[[], object]) -> float:
    _sync()
    t = time.perf_counter()
    fn()
    _sync()
    return time.perf_counter() - t


def summarize(times: list[float]) -> Timing:
    return Timing(statistics.median(times), min(times), max(times), len(times))


def time_fn(fn: Callable[[], object], repeats: int = 5, warmup: int = 1) -> Timing:
    """Median of ``repeats`` timed calls after ``warmup`` untimed ones."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        fn()
    return summarize([_once(fn) for _ in range(repeats)])


def time_pair(
    base: Callable[[], object], other: Callable[[], object], repeats: int = 5, warmup: int = 1
) -> tuple[Timing, Timing]:
    """Time two functions interleaved; returns (base timing, other timing)."""
    if repeats < 1:
        raise ValueError("repeats must be >= 1")
    for _ in range(warmup):
        base()
        other()
    tb, to = [], []
    for _ in range(repeats):
        tb.append(_once(base))
        to.append(_once(other))
    return summarize(tb), summarize(to)
