"""R-KV: scores equal a loop written from the paper's rule (window attention max-pooled, redundancy from the
pairwise cosine similarity with the newest similar partner left out, softmax), decode-time compression keeps
the cache within target + interval and equals the rows alone; keep=1 with no decode-time compression exact;
bad parameters refused. kvpress 0.5.5 has no R-KV press: the reference is the loop here."""

from __future__ import annotations

import pytest
import torch
from kv_models import padded_batch, random_ids, tiny_lm
from kv_press_refs import layer_views

from tokenreduce.kv import RKV, apply_press, generate_ids
from tokenreduce.kv import cache as kvc


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def _reference(view, window: int, kernel: int, lam: float, threshold: float) -> torch.Tensor:
    """Row 0 (no padding): lam * pooled window attention - (1 - lam) * redundancy, window +inf."""
    keys = view.keys[0].float()
    hkv, n, d = keys.shape
    a = view.window_attention(window)[0].mean(1)  # (H, N) -- the recomputed attention is tested elsewhere
    a = a.view(hkv, -1, n).mean(1)
    pooled = torch.stack([torch.stack([a[h, max(0, i - kernel // 2) : i + kernel // 2 + 1].max() for i in range(n)])
                          for h in range(hkv)])
    red = torch.zeros(hkv, n)
    for h in range(hkv):
        unit = keys[h] / keys[h].norm(dim=-1, keepdim=True)
        for i in range(n):
            sims = [(j, float(unit[i] @ unit[j])) for j in range(n) if j != i]
            similar = [j for j, s in sims if s > threshold]
            newest = max(similar) if similar else None
            red[h, i] = sum(s for j, s in sims if j != newest) / (n - 1)
        red[h] = torch.softmax(red[h], -1)
    out = lam * pooled - (1 - lam) * red
    out[:, n - window :] = float("inf")
    return out


def test_scores_equal_a_loop(model):
    for view in layer_views(model, random_ids(1, 30)):
        got = RKV(window=4, kernel=3, lam=0.3, threshold=0.2).score(view)[0]
        torch.testing.assert_close(got, _reference(view, 4, 3, 0.3, 0.2), atol=1e-5, rtol=1e-4)


def test_decode_time_budget_is_kept(model):
    ids = random_ids(2, 20)
    lengths = []

    def hook(mod, args, kwargs, out):
        lengths.append(kvc.seq_length(out.cache))

    with torch.no_grad(), apply_press(model, RKV(target=12, interval=3, window=4)):
        h = model.register_forward_hook(hook, with_kwargs=True)
        try:
            model.generate(input_ids=ids, max_new_tokens=20, do_sample=False, pad_token_id=0)
        finally:
            h.remove()
    assert max(lengths[1:]) <= 12 + 3 and min(lengths[1:]) < 20  # compressed during decoding


def test_batch_rows_equal_rows_alone_during_decoding(model):
    ids, mask, q = padded_batch()
    press = RKV(target=14, interval=2, window=4)
    both = generate_ids(model, ids, mask, q, press, max_new_tokens=10)
    for b, start in ((0, 0), (1, 9)):
        assert torch.equal(both[b : b + 1], generate_ids(model, ids[b : b + 1, start:], None, q[b : b + 1], press,
                                                          max_new_tokens=10))


def test_keep_one_without_decode_compression_is_exact(model):
    ids, mask, q = padded_batch()
    base = generate_ids(model, ids, mask, q, max_new_tokens=4)
    assert torch.equal(generate_ids(model, ids, mask, q, RKV(target=1000), max_new_tokens=4), base)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"lam": 1.5}, "lam must be in"), ({"threshold": 2.0}, "threshold must be in"), ({"target": 0}, "target"),
    ({"interval": 0}, "interval"), ({"kernel": 2}, "kernel must be an odd int"), ({"window": 0}, "window"),
    ({"keep": 0.0}, "keep must be in"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        RKV(**kwargs)
