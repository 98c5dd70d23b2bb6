"""Peak memory of a piece of work.

On CUDA: the allocator's peak (``torch.cuda.max_memory_allocated``), exact. On CPU PyTorch keeps
no allocator statistics, so we sample the process's resident set size (RSS) from
``/proc/self/statm`` in a background thread every millisecond and report the peak above the
level at the start: an approximation that can miss spikes shorter than the sampling period.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

import torch

_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _rss() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * _PAGE
    except OSError:  # not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def peak_memory(fn: Callable[[], object], device: str = "cpu", interval_s: float = 0.001) -> dict[str, float | str]:
    """Run ``fn`` once; return ``{"peak_bytes": ..., "method": "cuda-allocator" | "rss-sampled"}``."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return {"peak_bytes": float(torch.cuda.max_memory_allocated() - start), "method": "cuda-allocator"}
    start = _rss()
    peak = [start]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss())
            time.sleep(interval_s)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    try:
        fn()
    finally:
        peak[0] = max(peak[0], _rss())
        done.set()
        t.join()
    return {"peak_bytes": float(peak[0] - start), "method": "rss-sampled"}
