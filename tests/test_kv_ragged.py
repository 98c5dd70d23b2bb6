"""Per-head (AdaKV) and per-layer (PyramidKV) budgets in ragged storage: exactness and real memory."""

from __future__ import annotations

import math

import pytest
import torch
from kv_models import padded_batch, random_ids, tiny_lm

from tokenreduce.kv import generate_ids, kv_bytes, make_press
from tokenreduce.kv.ragged import RaggedLayer


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


@pytest.mark.parametrize("name", ["adakv", "pyramidkv"])
def test_keep_one_is_exact_and_restores_attention(model, name):
    ids, mask, q = padded_batch()
    base = generate_ids(model, ids, mask, q, max_new_tokens=4)
    out = generate_ids(model, ids, mask, q, make_press(name, keep=1.0), max_new_tokens=4, query_aware=True)
    assert torch.equal(out, base)
    assert model.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("kernel", [1, 5])
def test_equal_split_matches_dense_snapkv(model, kernel):
    """AdaKV with every head guaranteed its even share keeps exactly SnapKV's entries (with the same
    window and pooling kernel): the ragged attention path must then reproduce the dense SDPA path."""
    ids, mask, q = padded_batch()
    dense = generate_ids(model, ids, mask, q, make_press("snapkv", keep=0.3, window=8, kernel=kernel),
                         max_new_tokens=5)
    ragged = generate_ids(model, ids, mask, q, make_press("adakv", keep=0.3, window=8, kernel=kernel, min_share=1.0),
                          max_new_tokens=5)
    assert torch.equal(dense, ragged)


def test_batch_row_independent(model):
    ids, mask, q = padded_batch()
    press = make_press("adakv", keep=0.3, window=8)
    both = generate_ids(model, ids, mask, q, press, max_new_tokens=4)
    alone = generate_ids(model, ids[1:, 9:], None, q[1:], press, max_new_tokens=4)
    assert torch.equal(both[1:], alone)


@pytest.mark.parametrize("name", ["adakv", "pyramidkv"])
def test_bytes_held_equal_the_budget(model, name):
    from tokenreduce.kv import cache as kvc
    from tokenreduce.kv.hooks import apply_press
    from tokenreduce.kv.session import Session, prefill

    n, keep = 64, 0.25
    ids = random_ids(1, n, seed=2)
    press = make_press(name, keep=keep, window=8)
    s = Session(model, kvc.new_cache(model), ids[:, :0])
    with torch.no_grad(), apply_press(model, press, auto=False) as runner:
        prefill(s, ids, torch.ones_like(ids), runner)
    cfg = model.config
    hkv, d, layers = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads, cfg.num_hidden_layers
    entries = sum(math.ceil(n * press.layer_keep(i, layers) - 1e-9) * hkv for i in range(layers))
    assert all(isinstance(layer, RaggedLayer) for layer in s.cache.layers)
    padding = sum(layer.padding_bytes() for layer in s.cache.layers)  # each head padded to the layer's longest
    assert sum(sum(layer.lengths()[0]) for layer in s.cache.layers) == entries  # real entries: the budget
    assert kv_bytes(s.cache) == entries * d * 2 * 4 + padding  # keys + values, float32, + declared filler
    full = n * hkv * d * 2 * 4 * layers
    assert kv_bytes(s.cache) - padding <= 0.26 * full
    if name == "pyramidkv":  # equal heads within a layer: no filler
        assert padding == 0
    if name == "adakv":  # heads really got different budgets
        lengths = {t for layer in s.cache.layers for t in layer.lengths()[0]}
        assert len(lengths) > 1


def test_budget_parameters_are_validated():
    with pytest.raises(ValueError, match="min_share"):
        make_press("adakv", keep=0.5, min_share=2.0)
    with pytest.raises(ValueError, match="unknown press"):
        make_press("adakv", keep=0.5, scorer="nope")
    with pytest.raises(ValueError, match="slope"):
        make_press("pyramidkv", keep=0.5, slope=1.0)
