"""Slow benchmarks with the issue's targets as assertions (run apart: ``pytest -m slow``).

They time things, so run them on a quiet machine; each takes minutes on 2 CPU cores.
"""

from __future__ import annotations

import pytest

from tokenreduce.bench.tasks import default_data_dir, nq_retrieval, stsb
from tokenreduce.bench.text_bench import RunConfig, run_text_bench

pytestmark = pytest.mark.slow

BEST = RunConfig("tome", {"keep": 0.4, "schedule": "decreasing", "metric": "hidden", "min_tokens": 16})


def test_minilm_nq_and_stsb_targets():
    """≥ 1.5× passage throughput with ≤ 1 % relative MRR loss on NQ, ≤ 1.0 point STS-B loss."""
    data = default_data_dir()
    if data is None:
        pytest.skip("../shared/data not found")
    from tokenreduce.bench.encoder import load_text_encoder

    enc = load_text_encoder()
    res = run_text_bench(enc, [nq_retrieval(data), stsb(data)], [BEST], timing_batches=4, repeats=7, progress=False)
    base, row = res["rows"]
    assert base["nq:mrr"] == pytest.approx(0.94, abs=0.01) and base["nq:recall@1"] == pytest.approx(0.90, abs=0.01)
    assert row["nq:mrr:rel_change"] >= -0.01, row
    assert base["stsb-en:spearman"] - row["stsb-en:spearman"] <= 1.0, row
    assert row["speedup"] >= 1.5, row


def test_vit_b16_tome_speed():
    from tokenreduce.bench.vision_bench import run_vision_bench, vit_b16

    res = run_vision_bench(vit_b16(), [RunConfig("tome", {"r": 8}), RunConfig("tome", {"r": 13})], progress=False)
    r8, r13 = res["rows"][1:]
    assert r8["final_tokens"] == 197 - 8 * 12 and r13["final_tokens"] == 197 - 13 * 12
    assert 1.0 < r8["speedup"] < r13["speedup"]
    assert r13["flops_ratio"] < r8["flops_ratio"] < 1.0
