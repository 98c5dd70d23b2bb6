"""KV presses on tiny random Llama/Qwen2/Mistral/Gemma models: exactness, masking, positions, batching."""

from __future__ import annotations

import pytest
import torch
from kv_models import FAMILIES, compressed_session, padded_batch, random_ids, tiny_lm

from tokenreduce.kv import apply_press, generate_ids, kv_bytes, make_press, presses
from tokenreduce.kv import cache as kvc
from tokenreduce.kv.hooks import attention_modules
from tokenreduce.kv.session import Session, prefill

DENSE = ["random", "streaming_llm", "key_norm", "snapkv", "tova", "h2o", "keyformer"]


@pytest.fixture(scope="module")
def models():
    return {f: tiny_lm(f) for f in FAMILIES}


@pytest.mark.parametrize("family", list(FAMILIES))
def test_keep_one_reproduces_uncompressed_generation(models, family):
    m = models[family]
    ids, mask, q = padded_batch()
    base = generate_ids(m, ids, mask, q, max_new_tokens=4)
    for i, name in enumerate(DENSE if family == "llama" else ["snapkv", "h2o", "streaming_llm"]):
        aware = (i + len(family)) % 2 == 0  # both settings over the matrix, each press in one
        out = generate_ids(m, ids, mask, q, make_press(name, keep=1.0), query_aware=aware, max_new_tokens=4)
        assert torch.equal(out, base), name


def test_every_registered_press_is_covered():
    assert set(DENSE) <= set(presses())


@pytest.mark.parametrize("name", ["snapkv", "streaming_llm"])
def test_model_generate_with_press(models, name):
    m = models["llama"]
    ids, mask, _ = padded_batch()
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        base = m.generate(**kw)
        with apply_press(m, make_press(name, keep=1.0)):
            same = m.generate(**kw)
        with apply_press(m, make_press(name, keep=0.3)):
            small = m.generate(**kw)
    assert torch.equal(base, same)
    assert small.shape == base.shape
    # model.generate and our loop agree under compression too
    ours = generate_ids(m, ids, mask, None, make_press(name, keep=0.3), max_new_tokens=5)
    assert torch.equal(small[:, ids.shape[1] :], ours)



@pytest.mark.parametrize("family", list(FAMILIES))
def test_compressed_cache_equals_masking_the_dropped_tokens(models, family):
    """Independent reference: full cache + a 2D mask hiding the tokens StreamingLLM dropped, original positions.

    Equal logits show that kept keys, their RoPE positions and the new tokens' positions are all right.
    """
    m = models[family]
    n, sinks = 48, 3
    ids, cont = random_ids(1, n), random_ids(1, 6, seed=3)
    s = compressed_session(m, ids, make_press("streaming_llm", keep=0.4, sinks=sinks))
    got = s.feed(cont)
    k = -(-n * 4 // 10)
    ref_mask = torch.zeros(1, n + 6, dtype=torch.long)
    ref_mask[0, :sinks] = 1
    ref_mask[0, n - (k - sinks) :] = 1
    pos = torch.arange(n + 6)[None]
    with torch.no_grad():
        full = m(input_ids=ids, position_ids=pos[:, :n], use_cache=True)
        ref = m(input_ids=cont, attention_mask=ref_mask, position_ids=pos[:, n:], cache=full.cache).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert kvc.seq_length(s.cache) == k + 6
    # shifting positions (what a re-indexing bug would do) changes the result: the test can fail
    with torch.no_grad():
        full = m(input_ids=ids, position_ids=pos[:, :n], use_cache=True)
        wrong = m(input_ids=cont, attention_mask=ref_mask, position_ids=pos[:, n:] - (n - k), cache=full.cache).logits
    assert not torch.allclose(got, wrong, atol=1e-3)


def _kept(full_keys, small_keys):
    """Indices (Hkv, L) of the original entries present in a compressed layer (batch 1)."""
    d = torch.cdist(small_keys[0], full_keys[0])  # (Hkv, L, N); eager vs SDPA differ by float rounding only
    assert bool((d.min(-1).values < 1e-2).all())  # distinct keys are ~1 apart
    return d.argmin(-1)


def _eager_snapkv(attn_weights, hkv, window, kernel, k):
    """Straightforward SnapKV from materialized eager attention weights (1, H, N, N)."""
    a = attn_weights[0, :, -window:, :].mean(1)  # (H, N)
    a = torch.nn.functional.max_pool1d(a[:, None], kernel, 1, kernel // 2)[:, 0]
    a = a.view(hkv, -1, a.shape[-1]).mean(1)
    a[:, -window:] = float("inf")
    return a.sort(dim=-1, descending=True, stable=True).indices[:, :k].sort(-1).values  # ties: earlier first


@pytest.mark.parametrize("family", ["llama", "gemma"])
def test_snapkv_keeps_what_eager_attention_says(models, family):
    m = models[family]
    eager = tiny_lm(family, impl="eager")
    n, window, keep = 60, 8, 0.3
    ids = random_ids(1, n, seed=5)
    with torch.no_grad():
        out = eager(input_ids=ids, output_attentions=True, use_cache=True)
    s = compressed_session(m, ids, make_press("snapkv", keep=keep, window=window, kernel=5))
    k = -(-n * 3 // 10)
    for layer, att in enumerate(out.attentions):
        full_keys, _ = kvc.layer_kv(out.cache, layer)
        small_keys, _ = kvc.layer_kv(s.cache, layer)
        ref = _eager_snapkv(att, full_keys.shape[1], window, 5, k)
        assert torch.equal(_kept(full_keys, small_keys), ref), layer


@pytest.mark.parametrize("name", DENSE)
def test_batch_composition_does_not_change_a_row(models, name):
    """A left-padded row compresses and generates exactly as it does alone."""
    m = models["qwen2"]
    ids, mask, q = padded_batch()
    press = make_press(name, keep=0.3)
    aware = name in ("snapkv", "keyformer")
    both = generate_ids(m, ids, mask, q, press, max_new_tokens=4, query_aware=aware)
    alone = generate_ids(m, ids[1:, 9:], None, q[1:], press, max_new_tokens=4, query_aware=aware)
    assert torch.equal(both[1:], alone)


def test_kv_bytes_shrink_with_keep(models):
    m = models["mistral"]
    ids = random_ids(1, 100)
    full = compressed_session(m, ids, make_press("snapkv", keep=1.0))
    quarter = compressed_session(m, ids, make_press("snapkv", keep=0.25))
    assert kv_bytes(quarter.cache) == kv_bytes(full.cache) * 25 // 100


def test_chunked_prefill_matches_one_shot(models):
    m = models["llama"]
    ids, mask, q = padded_batch()
    # keep 0.9: no row holds more than its budget before the last chunk, so nothing is compressed
    # earlier (a chunked prefill compresses whenever a row exceeds it: tests/test_kv_chunked.py)
    for press in (None, make_press("key_norm", keep=0.9), make_press("streaming_llm", keep=0.9)):
        one = generate_ids(m, ids, mask, q, press, max_new_tokens=6)
        chunked = generate_ids(m, ids, mask, q, press, max_new_tokens=6, chunk_size=16)
        assert torch.equal(one, chunked)


def test_bad_parameters_fail_before_compute(models):
    for bad in (0.0, 1.5, -1):
        with pytest.raises(ValueError, match="keep must be in"):
            make_press("snapkv", keep=bad)
    with pytest.raises(ValueError, match="unknown press"):
        make_press("nope")
    with pytest.raises(TypeError, match="unknown parameter"):
        make_press("snapkv", keep=0.5, windw=3)
    with pytest.raises(ValueError, match="sinks"):
        make_press("streaming_llm", sinks=-1)
    with pytest.raises(ValueError, match="no decoder self-attention"):
        attention_modules(torch.nn.Linear(2, 2))


def test_decode_time_compression_bounds_the_cache(models):
    m = models["llama"]
    ids, mask, q = padded_batch()
    base = generate_ids(m, ids, mask, q, max_new_tokens=12)
    # never triggered (target + interval above the final length): exact
    same = generate_ids(m, ids, mask, q, make_press("decoding", target=100, interval=8), max_new_tokens=12)
    assert torch.equal(same, base)
    press = make_press("decoding", scorer="key_norm", target=30, interval=4)
    s = Session(m, kvc.new_cache(m), ids[:, :0])
    lengths = []
    with torch.no_grad(), apply_press(m, press, auto=False) as runner:
        logits = prefill(s, ids, mask, runner)
        assert kvc.seq_length(s.cache) == 40  # the prompt itself is not compressed (keep=1)
        for _ in range(12):
            logits = s.feed(logits[:, -1].argmax(-1, keepdim=True), runner=runner)
            lengths.append(kvc.seq_length(s.cache))
    assert max(lengths) <= 30 + 4 and min(lengths) >= 30
    state = kvc.get_state(s.cache)  # the prefix + the entries after it account for every token fed
    assert state.seen + kvc.seq_length(s.cache) - state.prefix_mask.shape[1] == 40 + 12
