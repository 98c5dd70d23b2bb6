"""KV merging (``merge``): the merge equals a loop written from the rule; keep=1 exact; the cache holds the
eviction's entries and bytes; batch rows equal rows alone; composition and bad parameters."""

from __future__ import annotations

import math

import pytest
import torch
from kv_models import padded_batch, random_ids, tiny_fused_lm, tiny_lm, tiny_sliding_lm
from kv_press_refs import layer_views

from tokenreduce.kv import AdaKV, KeyNorm, MergePress, SnapKV, apply_press, generate_ids, kv_bytes, make_press
from tokenreduce.kv import cache as kvc
from tokenreduce.kv.bench import capture_prefill, press_cache
from tokenreduce.kv.presses.merge import merge_entries
from tokenreduce.kv.select import protect, select
from tokenreduce.kv.session import Session, prefill


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def _loop_merge(keys, values, valid, kept, prefix_mask, weight, threshold, mode, merge_keys):
    """The rule written out per row, head and evicted entry."""
    b_, h_, _, _ = keys.shape
    out_k, out_v = keys.new_zeros(*kept.shape, keys.shape[-1]), values.new_zeros(*kept.shape, values.shape[-1])
    for b in range(b_):
        for h in range(h_):
            slots = [s for s in range(kept.shape[-1]) if prefix_mask[b, s]]
            chosen = {int(kept[b, h, s]) for s in slots}
            into: dict[int, list[int]] = {s: [] for s in slots}
            for n in range(keys.shape[2]):
                if not valid[b, n] or n in chosen:
                    continue
                sims = [float(torch.nn.functional.cosine_similarity(keys[b, h, n], keys[b, h, kept[b, h, s]], dim=0))
                        for s in slots]
                best = max(range(len(slots)), key=lambda i: sims[i])
                if sims[best] >= threshold:
                    into[slots[best]].append(n)
            for s in range(kept.shape[-1]):
                t = int(kept[b, h, s])
                out_k[b, h, s], out_v[b, h, s] = keys[b, h, t], values[b, h, t]
                if not prefix_mask[b, s] or not into[s]:
                    continue
                for x, out, on in ((keys, out_k, merge_keys), (values, out_v, True)):
                    if not on:
                        continue
                    if mode == "add":
                        out[b, h, s] = x[b, h, t] + sum(min(1.0, float(weight[b, h, n] / weight[b, h, t])) * x[b, h, n]
                                                        for n in into[s])
                    else:
                        num = weight[b, h, t] * x[b, h, t] + sum(weight[b, h, n] * x[b, h, n] for n in into[s])
                        out[b, h, s] = num / (weight[b, h, t] + sum(weight[b, h, n] for n in into[s]))
    return out_k, out_v


@pytest.mark.parametrize("mode", ["mean", "add"])
@pytest.mark.parametrize("merge_keys", [False, True])
@pytest.mark.parametrize("threshold", [-1.0, 0.2])
def test_merge_equals_a_loop(mode, merge_keys, threshold):
    g = torch.Generator().manual_seed(0)
    keys, values = torch.randn(2, 2, 14, 4, generator=g), torch.randn(2, 2, 14, 4, generator=g)
    valid = torch.ones(2, 14, dtype=torch.bool)
    valid[1, :5] = False  # left padding: row 1 keeps fewer, so it gets a filler slot
    weight = torch.rand(2, 2, 14, generator=g) * valid[:, None]
    scores = protect(torch.rand(2, 2, 14, generator=g), valid, 0, 0)
    kept, prefix_mask = select(scores, valid, 0.3)
    assert not prefix_mask.all()  # a filler slot is exercised
    got = merge_entries(keys, values, valid, kept, prefix_mask, weight, threshold, mode, merge_keys, chunk=5)
    want = _loop_merge(keys, values, valid, kept, prefix_mask, weight, threshold, mode, merge_keys)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_same_entries_and_bytes_as_eviction(model):
    """Keys are the scorer's kept keys exactly (values only merged by default), bytes = the budget."""
    ids = random_ids(1, 40)
    pre = capture_prefill(model, ids)
    evicted = press_cache(model, pre, SnapKV(keep=0.25, window=4))
    merged = press_cache(model, pre, MergePress(keep=0.25, scorer=SnapKV(window=4), window=4))
    cfg = model.config
    per_entry = cfg.num_key_value_heads * (cfg.hidden_size // cfg.num_attention_heads) * 2 * 4
    assert kv_bytes(merged) == kv_bytes(evicted) == cfg.num_hidden_layers * math.ceil(0.25 * 40) * per_entry
    changed = 0
    for a, b in zip(merged.layers, evicted.layers):
        assert torch.equal(a.keys, b.keys)
        changed += int((a.values != b.values).any(-1).sum())
    assert changed > 0  # something was merged


def test_layer_equals_merge_of_the_scorers_selection(model):
    """In the model, each layer holds merge_entries of the scorer's own selection, weighted by the window."""
    ids, mask, _ = padded_batch()
    press = MergePress(keep=0.3, scorer=KeyNorm(), window=4, threshold=-1.0)
    s = Session(model, kvc.new_cache(model), ids[:, :0])
    with torch.no_grad(), apply_press(model, press, auto=False) as runner:
        prefill(s, ids, mask, runner)
    for view in layer_views(model, ids, mask):
        kept, pm = select(protect(press.score(view), view.valid, 0, 0), view.valid, 0.3)
        weight = view.window_attention(4).mean(2).view(2, 2, 3, -1).mean(2)
        k, v = merge_entries(view.keys, view.values, view.valid, kept, pm, weight, -1.0)
        torch.testing.assert_close(s.cache.layers[view.layer].values, v, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(s.cache.layers[view.layer].keys, k)


@pytest.mark.parametrize("spec", [{}, {"mode": "add", "keys": True}])
def test_keep_one_is_exact(model, spec):
    ids, mask, q = padded_batch()
    base = generate_ids(model, ids, mask, q, max_new_tokens=4)
    assert torch.equal(generate_ids(model, ids, mask, q, make_press("merge", keep=1.0, **spec), max_new_tokens=4), base)
    pre = capture_prefill(model, random_ids(1, 40))
    for a, b in zip(press_cache(model, pre, MergePress(**spec)).layers, press_cache(model, pre, None).layers):
        assert torch.equal(a.keys, b.keys) and torch.equal(a.values, b.values)


@pytest.mark.parametrize("spec", [{"window": 4}, {"window": 4, "mode": "add", "keys": True, "threshold": 0.1}])
def test_batch_rows_equal_rows_alone(model, spec):
    ids, mask, q = padded_batch()
    press = make_press("merge", keep=0.4, scorer=SnapKV(window=4), **spec)
    both = generate_ids(model, ids, mask, q, press, max_new_tokens=5)
    alone = generate_ids(model, ids[1:, 9:], None, q[1:], press, max_new_tokens=5)
    assert torch.equal(both[1:], alone)


@pytest.mark.parametrize("build", [lambda: tiny_fused_lm("gpt2"), lambda: tiny_sliding_lm("gemma3"),
                                   lambda: tiny_lm("qwen2")], ids=["gpt2-recorded", "gemma3-sliding", "qwen2"])
def test_other_families_keep_one_exact_and_rows_alone(build):
    model = build()
    ids, mask, q = padded_batch()
    base = generate_ids(model, ids, mask, q, max_new_tokens=3)
    assert torch.equal(generate_ids(model, ids, mask, q, make_press("merge", keep=1.0), max_new_tokens=3), base)
    press = make_press("merge", keep=0.4, window=4)
    both = generate_ids(model, ids, mask, q, press, max_new_tokens=3)
    assert torch.equal(both[1:], generate_ids(model, ids[1:, 9:], None, q[1:], press, max_new_tokens=3))


def test_chunked_prefill_holds_the_budget(model):
    ids = random_ids(1, 48, seed=2)
    press = MergePress(keep=0.25, scorer=SnapKV(window=4), window=4)
    s = Session(model, kvc.new_cache(model), ids[:, :0])
    with torch.no_grad(), apply_press(model, press, auto=False) as runner:
        prefill(s, ids, torch.ones_like(ids), runner, chunk_size=16)
    assert all(layer.keys.shape[2] == 12 for layer in s.cache.layers)


def test_composes_by_name_and_object():
    assert make_press("merge", keep=0.3, scorer="key_norm") == MergePress(keep=0.3, scorer=KeyNorm())
    assert make_press("merge", keep=0.3).scorer == SnapKV(keep=0.3)
    with pytest.raises(ValueError, match="merges evicted entries"):
        AdaKV(keep=0.3, scorer=MergePress())


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"window": 0}, "window must be in"), ({"threshold": 1.5}, r"threshold must be in \[-1, 1\]"),
    ({"mode": "sum"}, "mode must be one of mean, add"), ({"keys": 1}, "keys"), ({"scorer": "adakv"}, "cannot score"),
    ({"scorer": "zipcache"}, "cannot score for merge"), ({"keep": 1.5}, "keep must be in"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        MergePress(**kwargs)
