"""KVzip (reconstruction-scored eviction) on tiny random models: exactness, eager reference, budget, batching."""

from __future__ import annotations

import math

import pytest
import torch
from kv_models import padded_batch, random_ids, tiny_lm

from tokenreduce.kv import apply_press, generate_ids, kv_bytes, make_press
from tokenreduce.kv import cache as kvc
from tokenreduce.kv.kvzip import compress_cache, reconstruction_scores
from tokenreduce.kv.ragged import RaggedLayer
from tokenreduce.kv.session import Session

PROMPT = torch.tensor([5, 7, 11])


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def _full_cache(m, ids, mask=None):
    s = Session(m, kvc.new_cache(m), ids[:, :0])
    s.feed(ids, mask, last_only=True)
    return s.cache


@pytest.mark.parametrize("budget", ["layer", "head", "global"])
def test_keep_one_reproduces_uncompressed_generation(model, budget):
    ids, mask, q = padded_batch()
    base = generate_ids(model, ids, mask, q, max_new_tokens=5)
    out = generate_ids(model, ids, mask, q, make_press("kvzip", keep=1.0, chunk=16, budget=budget),
                       max_new_tokens=5)
    assert torch.equal(out, base)
    small = generate_ids(model, ids, mask, q, make_press("kvzip", keep=0.2, chunk=16, budget=budget),
                         max_new_tokens=5)
    assert small.shape == base.shape and model.config._attn_implementation == "sdpa"


def _eager_reference(eager, ids, prompt, chunk, window=0):
    """Straightforward KVzip scores (layers, Hkv, N) from materialized eager attention of one uncached forward
    over ``context + prompt + chunk`` per chunk, and over the context for its last ``window`` rows (batch 1)."""
    n, p = ids.shape[1], len(prompt)
    hkv = eager.config.num_key_value_heads
    best = None
    for s in range(0, n, chunk):
        part = ids[0, s : s + chunk]
        seq = torch.cat([ids[0], prompt, part])[None]
        with torch.no_grad():
            att = eager(input_ids=seq, output_attentions=True).attentions
        rows = [a[0, :, n + p :, :n].amax(dim=1) for a in att]  # (H, N): max over the chunk's queries
        got = torch.stack([r.view(hkv, -1, n).amax(dim=1) for r in rows])  # max over the GQA group
        best = got if best is None else torch.maximum(best, got)
    if window:
        with torch.no_grad():
            att = eager(input_ids=ids, output_attentions=True).attentions
        got = torch.stack([a[0, :, -window:].mean(dim=1).view(hkv, -1, n).mean(dim=1).sqrt() for a in att])
        best = torch.maximum(best, got)
    return best


@pytest.mark.parametrize("family,window", [("llama", 0), ("gemma", 0), ("llama", 12), ("gemma", 12)])
def test_scores_match_eager_attention(family, window):
    m, eager = tiny_lm(family), tiny_lm(family, impl="eager")
    ids = random_ids(1, 40, seed=4)
    with torch.no_grad():
        got = torch.stack([s[0] for s in reconstruction_scores(m, _full_cache(m, ids), ids, torch.ones_like(ids),
                                                                PROMPT, chunk=16, window=window)])
    ref = _eager_reference(eager, ids, PROMPT, 16, window)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert float(ref.std()) > 1e-2  # scores discriminate: a wrong mask or position would show


@pytest.mark.parametrize("budget", ["layer", "head", "global"])
def test_cache_holds_exactly_the_budget(model, budget):
    n, keep = 64, 0.25
    ids = random_ids(1, n, seed=2)
    cache = _full_cache(model, ids)
    with torch.no_grad():
        compress_cache(model, cache, ids, None, make_press("kvzip", keep=keep, chunk=24, budget=budget), PROMPT)
    cfg = model.config
    hkv, d, layers = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads, cfg.num_hidden_layers
    padding = sum(layer.padding_bytes() for layer in cache.layers if isinstance(layer, RaggedLayer))
    assert kv_bytes(cache) == math.ceil(n * keep) * hkv * layers * d * 2 * 4 + padding  # float32, + declared filler
    assert all(isinstance(layer, RaggedLayer) == (budget != "layer") for layer in cache.layers)
    if budget == "head":  # heads really got different budgets, layers the same
        assert len({t for layer in cache.layers for t in layer.lengths()[0]}) > 1
        assert len({sum(layer.lengths()[0]) for layer in cache.layers}) == 1
    elif budget == "global":  # layers too
        assert len({sum(layer.lengths()[0]) for layer in cache.layers}) > 1
    else:
        assert kvc.seq_length(cache) == math.ceil(n * keep)


def test_kept_entries_are_the_top_scores(model):
    ids = random_ids(1, 48, seed=6)
    cache = _full_cache(model, ids)
    with torch.no_grad():
        scores = reconstruction_scores(model, cache, ids, torch.ones_like(ids), PROMPT, chunk=20)
        full_keys = [kvc.layer_kv(cache, i)[0] for i in range(len(scores))]
        compress_cache(model, cache, ids, None, make_press("kvzip", keep=0.25, chunk=20, budget="layer"), PROMPT)
    k = math.ceil(48 * 0.25)
    for i, s in enumerate(scores):
        top = s[0].topk(k, dim=-1).indices.sort(-1).values  # (Hkv, k)
        want = full_keys[i][0].gather(1, top[..., None].expand(-1, -1, full_keys[i].shape[-1]))
        assert torch.equal(kvc.layer_kv(cache, i)[0][0], want)


@pytest.mark.parametrize("min_share", [0.0, 0.5])
def test_global_budget_keeps_the_best_entries_of_all_layers(model, min_share):
    """Cross-layer ranking against a plain top-k over every (layer, head, position) score."""
    n, keep = 48, 0.25
    ids = random_ids(1, n, seed=8)
    cache = _full_cache(model, ids)
    with torch.no_grad():
        scores = torch.stack([s[0] for s in reconstruction_scores(model, cache, ids, torch.ones_like(ids), PROMPT,
                                                                   chunk=20)])  # (S, Hkv, N)
        full = [kvc.layer_kv(cache, i) for i in range(len(scores))]
        compress_cache(model, cache, ids, None, make_press("kvzip", keep=keep, chunk=20, min_share=min_share), PROMPT)
    per_head = math.ceil(n * keep)
    floor = int(min_share * per_head)
    want = torch.zeros_like(scores, dtype=torch.bool)
    for layer in range(scores.shape[0]):  # each (layer, head)'s floor first, then the best of the rest
        for h in range(scores.shape[1]):
            want[layer, h, scores[layer, h].topk(floor).indices] = True
    rest = scores.masked_fill(want, float("-inf")).flatten().topk(per_head * scores.shape[1] * scores.shape[0] -
                                                                  int(want.sum())).indices
    want.view(-1)[rest] = True
    for layer, (keys, values) in enumerate(full):
        stored = cache.layers[layer]
        for h in range(scores.shape[1]):
            pos = want[layer, h].nonzero().flatten()
            assert torch.equal(stored.k[0][h], keys[0, h, pos]) and torch.equal(stored.v[0][h], values[0, h, pos])


@pytest.mark.parametrize("budget,window", [("layer", 0), ("head", 0), ("global", 0), ("global", 35)])
def test_batch_rows_equal_single_rows(model, budget, window):
    ids, mask, q = padded_batch()  # row 1: 9 padding + 31 tokens, so window 35 reaches into its padding
    with torch.no_grad():
        both = reconstruction_scores(model, _full_cache(model, ids, mask), ids, mask, PROMPT, chunk=12, window=window)
        alone = reconstruction_scores(model, _full_cache(model, ids[1:, 9:]), ids[1:, 9:], torch.ones(1, 31), PROMPT,
                                      chunk=12, window=window)
    for a, b in zip(both, alone, strict=True):
        torch.testing.assert_close(a[1:, :, 9:], b, rtol=1e-5, atol=1e-6)
        assert float(a[1:, :, :9].abs().max()) == 0.0  # padding scores nothing
    press = make_press("kvzip", keep=0.3, chunk=12, budget=budget, window=window)
    out = generate_ids(model, ids, mask, q, press, max_new_tokens=4)
    single = generate_ids(model, ids[1:, 9:], None, q[1:], press, max_new_tokens=4)
    assert torch.equal(out[1:], single)


def test_bad_input_is_a_clear_error(model):
    for bad in ({"chunk": 0}, {"min_share": 2.0}, {"keep": 0.0}, {"budget": "row"}, {"window": -1}):
        with pytest.raises(ValueError):
            make_press("kvzip", **bad)
    with pytest.raises(ValueError, match="model.generate"), apply_press(model, make_press("kvzip", keep=0.5)):
        pass
    ids = random_ids(1, 20)
    cache = _full_cache(model, ids)
    with pytest.raises(ValueError, match="uncompressed cache"):
        compress_cache(model, cache, ids[:, :10], None, make_press("kvzip", keep=0.5))
