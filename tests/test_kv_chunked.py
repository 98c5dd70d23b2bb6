"""Chunked prefill that compresses after every chunk: the cache stays within the budget plus one chunk."""

from __future__ import annotations

import math

import pytest
import torch
from kv_models import padded_batch, random_ids, tiny_lm

from tokenreduce.kv import apply_press, generate_ids, kv_bytes, make_press
from tokenreduce.kv import cache as kvc
from tokenreduce.kv.ragged import RaggedLayer
from tokenreduce.kv.session import Session, prefill

# every press of the core set that runs inside apply_press (KVzip scores with a second pass)
PRESSES = {
    "snapkv": {"window": 4}, "tova": {}, "h2o": {}, "keyformer": {"window": 4}, "random": {},
    "streaming_llm": {}, "key_norm": {}, "adakv": {"window": 4}, "pyramidkv": {"window": 4},
    "zipcache": {"bits": 8, "group": 8, "window": 4, "stride": 5}, "decoding": {"target": 12, "interval": 4},
    "merge": {"window": 4},
}


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def _held(cache) -> int:
    """KV bytes held, the declared per-head padding of ragged layers left out."""
    pad = sum(layer.padding_bytes() for layer in cache.layers if isinstance(layer, RaggedLayer))
    return kv_bytes(cache) - pad


@pytest.mark.parametrize("name", ["snapkv", "h2o", "streaming_llm", "adakv", "pyramidkv", "tova"])
def test_held_cache_never_exceeds_budget_plus_one_chunk(model, name):
    """Watched inside every layer's forward, before the press shortens it (the largest it gets), at every chunk."""
    n, chunk, keep = 64, 8, 0.25
    ids = random_ids(1, n, seed=3)
    press = make_press(name, keep=keep, **PRESSES[name])
    cfg = model.config
    hkv, d, layers = cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads, cfg.num_hidden_layers
    entry = hkv * d * 2 * 4  # keys + values of one token, float32
    budget = sum(math.ceil(n * press.layer_keep(i, layers) - 1e-9) for i in range(layers)) * entry
    seen: list[int] = []
    s = Session(model, kvc.new_cache(model), ids[:, :0])
    watch = [m.self_attn.register_forward_hook(lambda *a: seen.append(_held(s.cache))) for m in model.model.layers]
    try:  # registered before the press's hooks, so each sees its layer with the chunk appended, uncompressed
        with torch.no_grad(), apply_press(model, press, auto=False) as runner:
            prefill(s, ids, torch.ones_like(ids), runner, chunk_size=chunk)
    finally:
        for h in watch:
            h.remove()
    assert len(seen) == layers * n // chunk
    assert max(seen) <= budget + layers * chunk * entry
    assert max(seen) > budget  # the bound is reached: one chunk on top of a full budget
    assert _held(s.cache) == budget
    # without compression the last chunk would hold every token
    assert max(seen) < n * layers * entry


@pytest.mark.parametrize("name", list(PRESSES))
def test_one_chunk_is_one_shot_exactly(model, name):
    ids, mask, q = padded_batch()
    press = make_press(name, keep=0.4, **PRESSES[name])
    one, lo = generate_ids(model, ids, mask, q, press, max_new_tokens=5, output_logits=True)
    for size in (ids.shape[1], 100):
        got, lg = generate_ids(model, ids, mask, q, press, max_new_tokens=5, chunk_size=size, output_logits=True)
        assert torch.equal(one, got) and torch.equal(lo, lg), (name, size)


@pytest.mark.parametrize("name", list(PRESSES))
def test_batch_rows_equal_single_rows(model, name):
    """Chunks are cut from the end, so a left-padded row is cut and compressed as when alone."""
    ids, mask, q = padded_batch()  # row 1: 9 padding + 31 tokens
    press = make_press(name, keep=0.4, **PRESSES[name])
    both, lb = generate_ids(model, ids, mask, q, press, max_new_tokens=5, chunk_size=8, output_logits=True)
    for b, start in ((0, 0), (1, 9)):
        one, lo = generate_ids(model, ids[b:b + 1, start:], None, q[b:b + 1], press, max_new_tokens=5, chunk_size=8,
                               output_logits=True)
        assert torch.equal(both[b:b + 1], one), (name, b)
        torch.testing.assert_close(lb[b:b + 1], lo, atol=1e-5, rtol=1e-5)


def test_chunked_compression_really_compresses_early(model):
    """Compressing after every chunk changes what later chunks attend to (it is not one-shot in disguise),
    and without a press chunking changes nothing."""
    ids, mask, q = padded_batch()
    assert torch.equal(generate_ids(model, ids, mask, q, max_new_tokens=5),
                       generate_ids(model, ids, mask, q, max_new_tokens=5, chunk_size=8))
    press = make_press("snapkv", keep=0.25, window=4)
    _, one = generate_ids(model, ids, mask, q, press, max_new_tokens=3, output_logits=True)
    _, chunked = generate_ids(model, ids, mask, q, press, max_new_tokens=3, chunk_size=8, output_logits=True)
    assert not torch.allclose(one, chunked)
