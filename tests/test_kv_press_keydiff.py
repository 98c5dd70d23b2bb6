"""KeyDiff: scores equal a straightforward loop and kvpress's KeyDiffPress; keep=1 exact; bad parameters refused."""

from __future__ import annotations

import pytest
import torch
from kv_models import padded_batch, tiny_lm
from kv_press_refs import kvpress_or_skip, layer_views

from tokenreduce.kv import KeyDiff, generate_ids, make_press
from tokenreduce.kv.bench import capture_prefill, press_cache


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def _reference(keys: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(keys.shape[:3])
    for b in range(keys.shape[0]):
        real = valid[b].nonzero().flatten()
        for h in range(keys.shape[1]):
            unit = [keys[b, h, i] / keys[b, h, i].norm() for i in real]
            anchor = torch.stack(unit).mean(0)
            for i in real:
                k = keys[b, h, i]
                out[b, h, i] = -(k @ anchor) / (k.norm() * anchor.norm())
    return out


def test_scores_equal_a_loop_on_a_padded_batch(model):
    ids, mask, _ = padded_batch()
    for view in layer_views(model, ids, mask):
        got = KeyDiff().score(view)
        want = _reference(view.keys, view.valid)
        torch.testing.assert_close(got[view.valid[:, None].expand_as(got)], want[view.valid[:, None].expand_as(want)],
                                   atol=1e-5, rtol=1e-5)


def test_scores_equal_kvpress(model):
    kvpress = kvpress_or_skip()
    ids, _, _ = padded_batch()
    for view in layer_views(model, ids[:1]):
        theirs = kvpress.KeyDiffPress(compression_ratio=0.5).score(view.module, view.hidden, view.keys, view.values,
                                                                     None, {})
        torch.testing.assert_close(KeyDiff().score(view), theirs.float(), atol=1e-5, rtol=1e-5)


def test_keeps_the_least_similar_keys(model):
    ids, _, _ = padded_batch()
    pre = capture_prefill(model, ids[:1])
    cache = press_cache(model, pre, KeyDiff(keep=0.5))
    for view, layer in zip(layer_views(model, ids[:1]), cache.layers, strict=True):
        order = _reference(view.keys, view.valid).argsort(-1, descending=True)[..., :20].sort(-1).values
        want = view.keys.gather(2, order[..., None].expand(-1, -1, -1, view.keys.shape[-1]))
        torch.testing.assert_close(layer.keys, want)


def test_keep_one_is_exact(model):
    ids, mask, q = padded_batch()
    base = generate_ids(model, ids, mask, q, max_new_tokens=4)
    assert torch.equal(generate_ids(model, ids, mask, q, make_press("keydiff", keep=1.0), max_new_tokens=4), base)
    assert not torch.equal(generate_ids(model, ids, mask, q, make_press("keydiff", keep=0.2), max_new_tokens=4), base)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"keep": 0.0}, "keep must be in"), ({"keep": 1.5}, "keep must be in"), ({"sinks": -1}, "sinks"),
    ({"keep": "0.5"}, "keep"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        KeyDiff(**kwargs)
