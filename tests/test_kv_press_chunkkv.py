"""ChunkKV: whole chunks kept, chunk scores equal a loop and kvpress's ChunkKVPress selection; keep=1 exact;
padding does not move chunks; bad parameters refused."""

from __future__ import annotations

import pytest
import torch
from kv_models import padded_batch, random_ids, tiny_lm
from kv_press_refs import kvpress_or_skip, layer_views

from tokenreduce.kv import AdaKV, ChunkKV, KeyNorm, SnapKV, generate_ids, make_press
from tokenreduce.kv.bench import capture_prefill, press_cache
from tokenreduce.kv.presses.chunkkv import chunk_scores


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def _kept_positions(full_keys: torch.Tensor, kept_keys: torch.Tensor) -> list[int]:
    eq = (kept_keys[:, None, :] == full_keys[None, :, :]).all(-1)
    return sorted(int(i) for i in eq.nonzero()[:, 1])


def test_chunk_scores_equal_a_loop():
    scores = torch.rand(2, 3, 13)
    valid = torch.ones(2, 13, dtype=torch.bool)
    valid[1, :4] = False
    got = chunk_scores(scores, valid, 4)
    for b in range(2):
        real = valid[b].nonzero().flatten().tolist()
        for c in range(0, len(real), 4):
            members = real[c : c + 4]
            want = scores[b][:, members].sum(0).mean()
            torch.testing.assert_close(got[b, members], want.expand(len(members)))
    assert torch.isneginf(got[1, :4]).all()


def test_whole_chunks_are_kept(model):
    ids = random_ids(1, 40)
    full = press_cache(model, capture_prefill(model, ids), None)
    cache = press_cache(model, capture_prefill(model, ids), ChunkKV(keep=0.5, scorer=KeyNorm(), chunk=4))
    for layer in range(len(cache.layers)):
        for h in range(2):
            kept = _kept_positions(full.layers[layer].keys[0, h], cache.layers[layer].keys[0, h])
            assert len(kept) == 20
            chunks = {p // 4 for p in kept}
            assert len(chunks) == 5 and kept == sorted(p for c in chunks for p in range(4 * c, 4 * c + 4))
        heads = [_kept_positions(full.layers[layer].keys[0, h], cache.layers[layer].keys[0, h]) for h in range(2)]
        assert heads[0] == heads[1]  # the same chunks in every head


def test_selection_equals_kvpress(model):
    kvpress = kvpress_or_skip()
    ids = random_ids(1, 40)
    cache = press_cache(model, capture_prefill(model, ids), ChunkKV(keep=0.5, scorer=KeyNorm(), chunk=4))
    for view in layer_views(model, ids):
        theirs, _ = kvpress.ChunkKVPress(press=kvpress.KnormPress(compression_ratio=0.5), chunk_length=4).compress(
            view.module, view.hidden, view.keys, view.values, None, {})
        torch.testing.assert_close(cache.layers[view.layer].keys, theirs)


def test_padding_does_not_move_chunks(model):
    ids, mask, q = padded_batch()
    press = ChunkKV(keep=0.4, chunk=4, scorer=SnapKV(window=4))
    both = generate_ids(model, ids, mask, q, press, max_new_tokens=5)
    alone = generate_ids(model, ids[1:, 9:], None, q[1:], press, max_new_tokens=5)
    assert torch.equal(both[1:], alone)


def test_keep_one_is_exact(model):
    ids, mask, q = padded_batch()
    base = generate_ids(model, ids, mask, q, max_new_tokens=4)
    assert torch.equal(generate_ids(model, ids, mask, q, make_press("chunkkv", keep=1.0), max_new_tokens=4), base)


def test_composes_by_name_and_object():
    assert make_press("chunkkv", keep=0.3, scorer="key_norm", chunk=8) == ChunkKV(keep=0.3, scorer=KeyNorm(), chunk=8)
    assert isinstance(AdaKV(keep=0.3, scorer=ChunkKV()).scorer, ChunkKV)  # a plain scoring press scores for others


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"chunk": 0}, "chunk must be in"), ({"chunk": 2.5}, "chunk"), ({"scorer": "adakv"}, "cannot score for chunkkv"),
    ({"scorer": "zipcache"}, "cannot score for chunkkv"), ({"scorer": "nope"}, "unknown press"),
    ({"keep": 0.0}, "keep must be in"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ChunkKV(**kwargs)
