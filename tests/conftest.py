"""Test-wide settings: tiny models run on one torch thread (on a busy 2-core machine, thread
hand-offs cost far more than the matmuls); slow benchmarks keep torch's default thread count.

``device``: the device for tests that support one, from ``TOKENREDUCE_TEST_DEVICE`` (default ``cpu``;
``scripts/gpu_check.sh`` sets ``cuda``)."""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The device named by ``TOKENREDUCE_TEST_DEVICE`` (``cpu`` when unset); an unavailable one is an error,
    so a GPU run never passes silently on the CPU."""
    dev = torch.device(os.environ.get("TOKENREDUCE_TEST_DEVICE", "cpu"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise pytest.UsageError("TOKENREDUCE_TEST_DEVICE asks for cuda, but torch sees no CUDA device")
    return dev


@pytest.fixture(autouse=True)
def _one_thread_for_tiny_models(request):
    if request.node.get_closest_marker("slow"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
