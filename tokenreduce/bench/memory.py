"""Peak memory of a piece of work, from the allocator, not the process size.

On CUDA: ``torch.cuda.max_memory_allocated`` above the level at the start. On CPU PyTorch keeps no
allocator statistics, so we run the work once under ``torch.profiler`` with ``profile_memory``
and replay its allocation/free events in time order: the peak of the running sum is the peak of
tensor memory allocated by the work (exact for tensors; the Python heap is not included). RSS was
tried first and rejected: the allocator reuses freed pages, so RSS deltas depend on what ran
before.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def peak_memory(fn: Callable[[], object], device: str = "cpu") -> dict[str, float | str]:
    """Run ``fn`` once; return ``{"peak_bytes": ..., "method": "cuda-allocator" | "cpu-allocator-events"}``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return {"peak_bytes": float(torch.cuda.max_memory_allocated() - start), "method": "cuda-allocator"}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted((e.time_range.start, e.self_cpu_memory_usage) for e in prof.events() if e.self_cpu_memory_usage)
    cur = peak = 0
    for _, delta in events:
        cur += delta
        peak = max(peak, cur)
    return {"peak_bytes": float(peak), "method": "cpu-allocator-events"}
