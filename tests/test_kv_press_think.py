"""ThinK: channel scores equal a loop, pruned keys equal kvpress's ThinKPress (which zeroes them), the bytes
held shrink by the pruned channels (stored, not zeroed), logits equal a dense cache holding the zeroed keys,
eviction equals its scorer's, keep=1 exact, bad parameters refused."""

from __future__ import annotations

import pytest
import torch
from kv_models import compressed_session, padded_batch, random_ids, tiny_lm
from kv_press_refs import kvpress_or_skip, layer_views

from tokenreduce.kv import AdaKV, SnapKV, ThinK, apply_press, generate_ids, kv_bytes, make_press
from tokenreduce.kv import cache as kvc
from tokenreduce.kv.bench import capture_prefill, press_cache
from tokenreduce.kv.channels import ChannelLayer
from tokenreduce.kv.presses.think import channel_scores
from tokenreduce.kv.session import Session, prefill


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def test_channel_scores_equal_a_loop(model):
    ids, mask, _ = padded_batch()
    w = 6
    for view in layer_views(model, ids, mask):
        got = channel_scores(view, w)
        m = view.module
        for b in range(2):
            real = view.valid[b].nonzero().flatten()
            h = view.hidden[b, -w:]
            q = m.q_proj(h).view(w, -1, m.head_dim).transpose(0, 1)
            c, s = view.cos[b, -w:], view.sin[b, -w:]
            q = q * c + torch.cat([-q[..., m.head_dim // 2 :], q[..., : m.head_dim // 2]], -1) * s
            q2 = (q ** 2).mean(1).view(2, 3, -1).mean(1)  # the last 6 queries are real in both rows
            k2 = (view.keys[b][:, real] ** 2).mean(1)
            torch.testing.assert_close(got[b], q2 * k2, atol=1e-5, rtol=1e-4)


def test_pruned_keys_equal_kvpress(model):
    kvpress = kvpress_or_skip()
    ids = random_ids(1, 40)
    cache = press_cache(model, capture_prefill(model, ids), ThinK(channel_keep=0.5, window=8))
    for view in layer_views(model, ids):
        kw = {"hidden_states": view.hidden, "position_embeddings": (view.cos, view.sin)}
        theirs, _ = kvpress.ThinKPress(key_channel_compression_ratio=0.5, window_size=8).compress(
            view.module, view.hidden, view.keys.clone(), view.values, None, kw)
        layer = cache.layers[view.layer]
        assert isinstance(layer, ChannelLayer)
        torch.testing.assert_close(layer.dense_kv()[0], theirs)


def test_bytes_shrink_by_the_pruned_channels(model):
    ids = random_ids(2, 40)
    pre_full = kv_bytes(compressed_session(model, ids, make_press("snapkv", keep=1.0)).cache)
    s = compressed_session(model, ids, ThinK(channel_keep=0.25, window=4))
    n_layers, b, hkv, n, d = 3, 2, 2, 40, 8
    kept = 2  # of 8 channels
    elem = 4  # float32
    want = n_layers * (b * hkv * n * (kept + d) * elem + b * hkv * kept * 2)  # keys Dk + values D + int16 indices
    assert kv_bytes(s.cache) == want
    assert kv_bytes(s.cache) < 0.7 * pre_full


def test_logits_equal_a_dense_cache_with_the_channels_zeroed(model):
    ids, cont = random_ids(1, 40), random_ids(1, 6, seed=3)
    s = compressed_session(model, ids, ThinK(channel_keep=0.5, window=4))
    ref = Session(model, kvc.new_cache(model), ids[:, :0])
    ref.feed(ids)
    for i, layer in enumerate(s.cache.layers):
        k, v = layer.dense_kv()
        kvc.set_layer_kv(ref.cache, i, k, v)
    got = s.feed(cont)
    torch.testing.assert_close(got, ref.feed(cont), atol=1e-5, rtol=1e-5)
    full = Session(model, kvc.new_cache(model), ids[:, :0])
    full.feed(ids)
    assert not torch.allclose(got, full.feed(cont), atol=1e-3)  # pruning changes the output: the test can fail


def test_eviction_is_its_scorers(model):
    ids = random_ids(1, 40)
    pre = capture_prefill(model, ids)
    think = press_cache(model, pre, ThinK(keep=0.5, channel_keep=0.5, scorer=SnapKV(window=4)))
    snap = press_cache(model, pre, SnapKV(keep=0.5, window=4))
    for a, b in zip(think.layers, snap.layers, strict=True):
        torch.testing.assert_close(a.dense_kv()[1], b.values)


def test_keep_one_is_exact(model):
    ids, mask, q = padded_batch()
    base = generate_ids(model, ids, mask, q, max_new_tokens=4)
    assert torch.equal(generate_ids(model, ids, mask, q, ThinK(channel_keep=1.0), max_new_tokens=4), base)
    assert torch.equal(generate_ids(model, ids, mask, q, make_press("think", keep=1.0, channel_keep=1.0),
                                    max_new_tokens=4), base)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"channel_keep": 0.0}, "channel_keep must be in"), ({"channel_keep": 1.5}, "channel_keep must be in"),
    ({"window": 0}, "window must be in"), ({"scorer": "zipcache"}, "cannot score for think"),
    ({"keep": 0.0}, "keep must be in"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ThinK(**kwargs)


def test_is_never_a_scorer():
    with pytest.raises(ValueError, match="it prunes key channels"):
        AdaKV(keep=0.5, scorer=ThinK())


def test_chunked_prefill_prunes_after_every_chunk(model):
    """A layer pruned after one chunk is pressed again after the next (its pruned channels stay zero); the
    cache ends channel-pruned, and one chunk is one-shot exactly."""
    ids, mask, q = padded_batch()
    press = ThinK(keep=0.5, channel_keep=0.5, window=4)
    one = generate_ids(model, ids, mask, q, press, max_new_tokens=4)
    assert torch.equal(generate_ids(model, ids, mask, q, press, max_new_tokens=4, chunk_size=64), one)
    chunked = Session(model, kvc.new_cache(model), ids[:1, :0])
    with torch.no_grad(), apply_press(model, press, auto=False) as runner:
        prefill(chunked, ids[:1], torch.ones_like(ids[:1]), runner, chunk_size=8)  # TypeError before the fix
    assert all(isinstance(layer, ChannelLayer) for layer in chunked.cache.layers)
    assert kvc.seq_length(chunked.cache) == 20
    out = generate_ids(model, ids, mask, q, press, max_new_tokens=4, chunk_size=8)
    assert out.shape == one.shape
