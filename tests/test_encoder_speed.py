"""Issue 21: methods compute only what they need, with the same results as before.

MCTF (attention received) and Zero-TPrune (per-head PageRank) used to materialize the (B, H, N, N)
attention; they now build it a few heads at a time. Their scores and plans must equal the
materialized computation, and their peak memory must stay near the unreduced model's.
"""

from __future__ import annotations

import pytest
import torch
from transformers import BertConfig, BertModel

from tokenreduce.bench.memory import peak_memory
from tokenreduce.core.attention import query_rows
from tokenreduce.core.scoring import (
    attention_received,
    attention_received_blockwise,
    weighted_pagerank,
    weighted_pagerank_blockwise,
)
from tokenreduce.encoder.adapters import patch, unpatch
from tokenreduce.encoder.adapters import patched as tr_patched
from tokenreduce.encoder.methods import LayerTensors, make_method


def _inputs(seed: int, b: int = 3, h: int = 4, n: int = 23, d: int = 8, prop: bool = True):
    g = torch.Generator().manual_seed(seed)
    q, k = torch.randn(b, h, n, d, generator=g), torch.randn(b, h, n, d, generator=g)
    lengths = torch.tensor([n, n - 7, 5][:b])
    valid = torch.arange(n)[None] < lengths[:, None]
    sizes = torch.where(valid, torch.randint(1, 4, (b, n), generator=g).float(), 0.0)
    log_sizes = sizes.clamp(min=1e-6).log() if prop else None
    return q, k, valid, sizes, log_sizes


def _materialized(q, k, valid, log_sizes, scaling=0.35):
    return query_rows(q, k, scaling, key_mask=valid, log_sizes=log_sizes)


# block sizes: one head at a time, a few heads, whole rows, everything at once
BLOCKS = [1, 23 * 23 * 4 * 3, 23 * 23 * 4 * 4 * 2, 1 << 30]


@pytest.mark.parametrize("block", BLOCKS)
@pytest.mark.parametrize("prop", [True, False])
def test_attention_received_blockwise_equals_materialized(block, prop):
    for seed in range(3):
        q, k, valid, _, log_sizes = _inputs(seed, prop=prop)
        want = attention_received(_materialized(q, k, valid, log_sizes), valid)
        got = attention_received_blockwise(q, k, 0.35, valid, log_sizes, block_bytes=block)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("block", BLOCKS)
def test_pagerank_blockwise_equals_materialized(block):
    for seed in range(3):
        q, k, valid, _, log_sizes = _inputs(seed)
        want = weighted_pagerank(_materialized(q, k, valid, log_sizes), valid, 5)
        got = weighted_pagerank_blockwise(q, k, 0.35, valid, 5, log_sizes, block_bytes=block)
        torch.testing.assert_close(got, want, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("name,params", [("mctf", {}), ("mctf", {"metric": "keys"}), ("zero-tprune", {}),
                                         ("zero-tprune", {"similarity_share": 0.0})])
@pytest.mark.parametrize("seed", range(8))
def test_plans_equal_old_and_new_scoring(name, params, seed):
    """The plan from blockwise scoring (what the runner now passes) equals the plan from the
    materialized attention (what it passed before), on random inputs with padding and sizes."""
    m = make_method(name, r=1, **params)
    q, k, valid, sizes, log_sizes = _inputs(seed, prop=m.proportional_attention)
    g = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(3, q.shape[2], 16, generator=g)
    keys = k.mean(1)
    common = dict(x=x, sizes=sizes, keys=keys, cls_attn=None, layer=1, protected=1, num_layers=4)
    old = LayerTensors(**common, attn=_materialized(q, k, valid, log_sizes))
    new = LayerTensors(**common, queries=q, keys_heads=k, scaling=0.35, key_bias=log_sizes)
    r = torch.tensor([9, 5, 2])
    a, b = m.plan(old, r), m.plan(new, r)
    assert a.n_out == b.n_out
    assert torch.equal(a.dst, b.dst)
    if a.weights is not None:
        torch.testing.assert_close(a.weights, b.weights, atol=1e-6, rtol=1e-5)


def _minilm_shaped(layers: int = 2, impl: str = "sdpa") -> torch.nn.Module:
    """all-MiniLM-L6-v2's shape (hidden 384, 12 heads, FFN 1536), random weights, fewer layers."""
    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=200, hidden_size=384, num_hidden_layers=layers, num_attention_heads=12,
                     intermediate_size=1536, attn_implementation=impl)
    return BertModel(cfg, add_pooling_layer=False).eval()


@pytest.mark.parametrize("name", ["mctf", "zero-tprune", "diffrate"])
def test_peak_memory_near_unreduced(name):
    """Batch 16 of 128 tokens: the attention-graph methods stay within 1.1x the unreduced peak
    (they were at 2.6x with the materialized (B, H, N, N) attention)."""
    model = _minilm_shaped()
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 200, (16, 128), generator=g)
    mask = torch.ones_like(ids)
    mask[8:, 100:] = 0

    @torch.inference_mode()
    def run():
        return model(input_ids=ids, attention_mask=mask).last_hidden_state

    base = peak_memory(run)["peak_bytes"]
    patch(model, name, keep=0.7)
    try:
        red = peak_memory(run)["peak_bytes"]
    finally:
        unpatch(model)
    assert red <= 1.1 * base, (name, red / base)


def test_bench_vit_keep_runs_every_method(capsys, monkeypatch):
    """`tokenreduce bench vit --keep` times each method at that keep rate and reports peak memory
    (a 2-layer ViT-B/16 keeps the test short)."""
    from tokenreduce.bench import vision_bench
    from tokenreduce.cli import main

    small = vision_bench.vit_b16
    monkeypatch.setattr(vision_bench, "vit_b16", lambda: small(num_layers=2, image_size=64))
    code = main(["bench", "vit", "--keep", "0.7", "--methods", "mctf,zero-tprune,ats", "--repeats", "1",
                 "--batch-size", "2", "--no-progress"])
    out = capsys.readouterr().out
    assert code == 0
    for name in ("mctf(keep=0.7", "zero-tprune(keep=0.7", "ats(keep=0.7", "mem_ratio"):
        assert name in out
    assert main(["bench", "vit", "--keep", "0.7", "--r", "8"]) == 2


@pytest.mark.parametrize("name", ["tome", "evit", "diffrate", "ats"])
@pytest.mark.parametrize("keep", [0.9, 0.7, 0.3])
def test_min_step_takes_small_steps_early_and_keeps_the_total(name, keep):
    for n0 in (7, 20, 64, 100, 255):
        base = make_method(name, keep=keep).budget().removals_static(n0, 6, cap=0.5)
        got = make_method(name, keep=keep, min_step=0.05).budget().removals_static(n0, 6, cap=0.5)
        assert sum(got) == sum(base)  # same final token count
        least = -(-5 * n0 // 100)
        assert all(r == 0 or r >= min(least, sum(base)) or r == sum(base) - sum(got[:i]) for i, r in enumerate(got))
        assert sum(1 for r in got if r) <= sum(1 for r in base if r)  # never more reducing layers
        assert all(sum(got[: i + 1]) >= sum(base[: i + 1]) for i in range(6))  # front-loaded, never later
    assert make_method(name, keep=keep, min_step=0.0).budget() == make_method(name, keep=keep).budget()


def test_min_step_refused_out_of_range():
    for bad in (-0.1, 1.0, 2):
        with pytest.raises((ValueError, TypeError), match="min_step"):
            make_method("tome", keep=0.9, min_step=bad)


def test_min_step_patched_model_reduces_at_fewer_layers():
    from tokenreduce.encoder.adapters.runner import record_sources

    model = _minilm_shaped(layers=6)
    ids = torch.randint(5, 200, (2, 100), generator=torch.Generator().manual_seed(0))
    for params, layers in (({}, [0, 1, 2, 3, 4, 5]), ({"min_step": 0.05}, [0, 3])):
        patch(model, "tome", keep=0.9, **params)
        try:
            with record_sources() as recs, torch.inference_mode():
                model(input_ids=ids)
        finally:
            unpatch(model)
        assert [r.layer for r in recs] == layers
        assert int((recs[-1].sizes[0] > 0).sum()) == 1 + 99 - round(99 * 0.1)


@pytest.mark.parametrize("name", ["mctf", "zero-tprune"])
def test_attention_graph_methods_default_to_steps_of_a_tenth(name):
    """MCTF and Zero-TPrune default to min_step=0.1 (their scoring does not pay for 5 % steps): at keep 0.7
    over 6 layers they reduce at 3 layers, same final count; min_step=0 gives one step per layer."""
    default, per_layer = make_method(name, keep=0.7), make_method(name, keep=0.7, min_step=0.0)
    assert default.min_step == 0.1
    for n0 in (20, 64, 100, 255):
        got, base = default.budget().removals_static(n0, 6), per_layer.budget().removals_static(n0, 6)
        assert sum(got) == sum(base) and all(r > 0 for r in base)
        assert sum(1 for r in got if r) <= 3
        assert all(r == 0 or r >= -(-n0 // 10) or r == sum(base) - sum(got[:i]) for i, r in enumerate(got))
    assert per_layer.budget() == make_method("tome", keep=0.7).budget()


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
@pytest.mark.parametrize("name,params", [("mctf", {"keep": 0.5}), ("zero-tprune", {"keep": 0.5}),
                                         ("mctf", {"r": 4, "prop_attn": False}), ("zero-tprune", {"r": 6, "iters": 3})])
def test_block_attention_serves_the_statistic(impl, name, params, monkeypatch):
    """A reducing layer takes MCTF's / Zero-TPrune's statistic from its own (explicit, blockwise)
    attention instead of a second Q·Kᵀ next to the kernel: same token assignments at every layer as
    that recomputation (the previous path), outputs equal to rounding."""
    from tokenreduce.encoder.adapters import hf_attention
    from tokenreduce.encoder.adapters.runner import record_sources

    model = _minilm_shaped(layers=3, impl=impl)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 200, (4, 40), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 31:], mask[3, 17:] = 0, 0
    served = []
    real = hf_attention.attention_stats_blockwise

    def spy(*a, **k):
        served.append(k.get("v") is not None)
        return real(*a, **k)

    def run():
        with torch.inference_mode(), record_sources() as recs, tr_patched(model, name, **params):
            out = model(input_ids=ids, attention_mask=mask).last_hidden_state
        return out, [r.src for r in recs]

    monkeypatch.setattr(hf_attention, "attention_stats_blockwise", spy)
    new, new_src = run()
    assert served and all(served)  # every reducing layer was served by its own attention
    monkeypatch.setattr(hf_attention, "_serves", lambda *a: False)
    old, old_src = run()
    assert len(new_src) == len(old_src) == len(served)
    assert all(torch.equal(a, b) for a, b in zip(new_src, old_src))
    valid = mask.bool()
    torch.testing.assert_close(new[valid], old[valid], atol=1e-5, rtol=1e-5)
