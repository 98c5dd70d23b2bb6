"""Test-wide settings: tiny models run on one torch thread (on a busy 2-core machine, thread
hand-offs cost far more than the matmuls); slow benchmarks keep torch's default thread count."""

from __future__ import annotations

import pytest
import torch


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
