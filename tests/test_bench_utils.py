"""Timing, memory, Pareto front and result writing."""

from __future__ import annotations

import json
import time

import pytest
import torch

from tokenreduce.bench.memory import peak_memory
from tokenreduce.bench.report import format_table, pareto_front, write_results
from tokenreduce.bench.timing import time_fn, time_pair


def test_time_pair_orders_fast_and_slow():
    fast, slow = time_pair(lambda: time.sleep(0.001), lambda: time.sleep(0.01), repeats=3)
    assert fast.median_s < slow.median_s and fast.runs == slow.runs == 3
    t = time_fn(lambda: None, repeats=4, warmup=0)
    assert t.min_s <= t.median_s <= t.max_s
    with pytest.raises(ValueError):
        time_fn(lambda: None, repeats=0)


def test_peak_memory_is_exact_for_tensors():
    def work():
        a = torch.ones(1024 * 1024)  # 4 MiB
        b = torch.ones(2 * 1024 * 1024)  # 8 MiB
        del a
        c = torch.ones(1024 * 1024)  # reuses a's 4 MiB
        return float(b.sum() + c.sum())

    out = peak_memory(work)
    assert out["method"] == "cpu-allocator-events"
    assert 12 * 2**20 <= out["peak_bytes"] < 12 * 2**20 + 4096


def test_pareto_front():
    rows = [{"s": 1.0, "q": 0.9}, {"s": 1.5, "q": 0.89}, {"s": 1.4, "q": 0.85}, {"s": 2.0, "q": 0.5}, {"s": None}]
    assert pareto_front(rows, "s", "q") == [True, True, False, True, False]


def test_write_and_table(tmp_path):
    rows = [{"config": "none", "x": 1.0}, {"config": "tome(keep=0.5)", "x": 0.51234, "params": {"keep": 0.5}}]
    j, c = write_results({"meta": {"a": 1}, "rows": rows}, tmp_path / "out")
    assert json.loads(j.read_text())["rows"][1]["x"] == 0.51234
    assert c.read_text().splitlines()[0] == "config,x,params"
    table = format_table(rows, ["config", "x"])
    assert "tome(keep=0.5)" in table and "0.5123" in table
