"""Peak memory of a piece of work, from the allocator, not the process size.

On CUDA: ``torch.cuda.max_memory_allocated`` above the level at the start. On CPU PyTorch keeps no
allocator statistics, so we run the work once under ``torch.profiler`` with ``profile_memory``
and replay its allocation/free events in time order: the peak of the running sum is the peak of
tensor memory allocated by the work (exact for tensors; the Python heap is not included). RSS was
tried first and rejected: the allocator reuses freed pages, so RSS deltas depend on what ran
before.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch


@contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Send file descriptor 2 to /dev/null while the profiler starts and stops: its native logger prints
    ``profiler_start`` / ``profiler_stop`` lines there that no Python setting turns off. Kept under
    ``tokenreduce --verbose`` (``TOKENREDUCE_OUTPUT=verbose``) or when stderr is not a real descriptor."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        fd = None
    if fd is None or os.environ.get("TOKENREDUCE_OUTPUT") == "verbose":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(devnull)
        os.close(saved)


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> dict[str, float | str]:
    """Run ``fn`` once; return ``{"peak_bytes": ..., "method": "cuda-allocator" | "cpu-allocator-events"}``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return {"peak_bytes": float(torch.cuda.max_memory_allocated() - start), "method": "cuda-allocator"}
    with _native_stderr_silenced(), torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True
    ) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    cur = peak = 0
    for _, delta in events:
        cur += delta
        peak = max(peak, cur)
    return {"peak_bytes": float(peak), "method": "cpu-allocator-events"}
