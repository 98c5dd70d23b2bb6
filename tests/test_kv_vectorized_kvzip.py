"""KVzip's cheaper scoring pass (read-only cache view, logits-only max) against the pass it replaced:
the same scores (1e-5) and the same kept entries on a tiny model, batched and padded, with and without
the observation window."""

from __future__ import annotations

import pytest
import torch
from kv_models import padded_batch, random_ids, tiny_lm
from torch import Tensor, nn

from tokenreduce.kv import cache as kvc
from tokenreduce.kv import make_press, scoring
from tokenreduce.kv.hooks import attention_modules
from tokenreduce.kv.kvzip import _chunk_inputs, compress_cache, reconstruction_scores
from tokenreduce.kv.ragged import RaggedLayer
from tokenreduce.kv.session import Session

PROMPT = torch.tensor([5, 7, 11])


@torch.no_grad()
def _old_scores(
    model: nn.Module, cache, ids: Tensor, mask: Tensor, prompt: Tensor, chunk: int = 512, window: int = 0
) -> list[Tensor]:
    """Per layer, the max attention (B, Hkv, N) each of the N context entries in ``cache`` receives from
    the reconstruction queries of its GQA group (``ids``/``mask`` (B, N): the context; the cache is untouched).

    ``window`` > 0 also scores each entry by the square root of the mean attention it gets from the
    context's own last ``window`` queries (SnapKV's observation window, GQA-averaged; recomputed by
    feeding those tokens again after a copy of the cache cut before them) and keeps the larger score:
    what the next tokens will read, which the reconstruction alone under-weights. The square root puts
    a mean over many queries on the scale of the reconstruction's per-query maxima."""
    mods = attention_modules(model)
    valid = mask.bool()
    b, n = ids.shape
    best: dict[int, Tensor] = {}
    current: dict[str, Tensor] = {}

    def hook(mod, args, kwargs, out):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cos, sin = kwargs["position_embeddings"]
        keys, _ = kvc.layer_kv(current["cache"], mod.layer_idx)
        length, total = current["length"], keys.shape[2]
        q = scoring.window_queries(mod, hidden[:, -length:], cos[:, -length:], sin[:, -length:])
        a = scoring.window_attention(q, keys, mod.scaling, current["valid"], q_offset=total - length)[..., :n]
        qmask = current["qmask"]
        a = a * qmask[:, None, :, None]  # padding queries give nothing
        hkv = keys.shape[1]
        if current["mean"]:  # window: sqrt of the mean over real queries, GQA-averaged
            mean = a.sum(dim=2) / qmask.sum(-1).clamp(min=1.0)[:, None, None]
            s = mean.view(b, hkv, -1, n).mean(dim=2).sqrt()
        else:  # reconstruction: max over queries, then over the GQA group
            s = a.amax(dim=2).view(b, hkv, -1, n).amax(dim=2)
        best[mod.layer_idx] = torch.maximum(best[mod.layer_idx], s) if mod.layer_idx in best else s
        return out

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in mods]
    try:
        for start in range(0, int(valid.sum(-1).max()), chunk):
            rec, rec_mask, qmask = _chunk_inputs(ids, valid, prompt, start, chunk)
            session = Session(model, kvc.clone(cache), mask.long())
            full = torch.cat([mask.long(), rec_mask], dim=1)
            current.update(cache=session.cache, length=qmask.shape[1], valid=full.bool(), qmask=qmask, mean=False)
            session.feed(rec, rec_mask, last_only=True)
        if window > 0:
            w = min(window, n)
            session = Session(model, _cut(cache, n - w), mask[:, : n - w].long())
            current.update(cache=session.cache, length=w, valid=valid, qmask=mask[:, n - w :].float(), mean=True)
            session.feed(ids[:, n - w :], mask[:, n - w :], last_only=True)
    finally:
        for h in handles:
            h.remove()
    return [best[m.layer_idx].masked_fill(~valid[:, None, :], 0.0) for m in mods]


def _cut(cache, length: int):
    """A copy of a dense ``cache`` holding only its first ``length`` entries per layer."""
    out = kvc.clone(cache)
    for i in range(kvc.n_layers(out)):
        keys, values = kvc.layer_kv(out, i)
        kvc.set_layer_kv(out, i, keys[:, :, :length], values[:, :, :length])
    return out


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def _cache(m, ids, mask):
    s = Session(m, kvc.new_cache(m), ids[:, :0])
    s.feed(ids, mask, last_only=True)
    return s.cache


@pytest.mark.parametrize("window", [0, 12])
@pytest.mark.parametrize("chunk", [7, 16, 64])
def test_scores_equal_the_former_pass(model, window, chunk):
    ids, mask, _ = padded_batch()
    cache = _cache(model, ids, mask)
    old = _old_scores(model, cache, ids, mask, PROMPT, chunk, window)
    new = reconstruction_scores(model, cache, ids, mask, PROMPT, chunk, window, block=5)
    for a, b in zip(old, new, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert all(layer.keys.shape[2] == ids.shape[1] for layer in cache.layers)  # the cache is untouched


@pytest.mark.parametrize("budget", ["layer", "head", "global"])
@pytest.mark.parametrize("window", [0, 12])
def test_same_selections_as_the_former_pass(model, budget, window, monkeypatch):
    ids = random_ids(2, 48, seed=5)
    mask = torch.ones_like(ids)
    mask[1, :6] = 0
    press = make_press("kvzip", keep=0.25, chunk=16, budget=budget, window=window, min_share=0.1)
    kept = []
    for fn in (_old_scores, reconstruction_scores):
        monkeypatch.setattr("tokenreduce.kv.kvzip.reconstruction_scores", fn)
        cache = compress_cache(model, _cache(model, ids, mask), ids, mask, press, PROMPT)
        kept.append([(layer.keys, layer.values) if not isinstance(layer, RaggedLayer) else (layer.k, layer.v)
                     for layer in cache.layers])
    for (k0, v0), (k1, v1) in zip(*kept, strict=True):
        if isinstance(k0, Tensor):
            assert torch.equal(k0, k1) and torch.equal(v0, v1)
        else:
            assert all(torch.equal(a, b) for r0, r1 in zip(k0, k1, strict=True) for a, b in zip(r0, r1, strict=True))


def test_max_from_the_kernels_logsumexp_equals_the_logits_only_max():
    """The one-matmul form (queries carry -lse, keys a channel of ones; tiles of context entries) equals the
    logits-only max with the logsumexp formed from the logits: GQA, padded context entries, padding queries."""
    from tokenreduce.kv.kvzip import _max_given_lse, _reconstruction_max

    g = torch.Generator().manual_seed(3)
    b, h, hkv, length, n, extra, d = 2, 6, 2, 5, 11, 3, 8
    q = torch.randn(b, h, length, d, generator=g)
    keys = torch.randn(b, hkv, n + extra + length, d, generator=g)
    valid = torch.ones(b, n + extra + length, dtype=torch.bool)
    valid[1, :4] = False  # a left-padded context
    valid[1, n : n + 2] = False  # padding inside the prompt + chunk block
    qmask = torch.ones(b, length)
    qmask[1, :2] = 0  # padding queries
    total = keys.shape[2]
    logits = torch.einsum("bhqd,bhkd->bhqk", q * 0.3, keys.repeat_interleave(h // hkv, 1))
    pos = torch.arange(length) + total - length
    seen = valid[:, None, None, :] & (torch.arange(total)[None, :] <= pos[:, None])[None, None]
    lse = logits.masked_fill(~seen, float("-inf")).logsumexp(-1)
    ref = _reconstruction_max(q, keys, 0.3, valid, qmask, n, block=4)
    for tile, block in ((3, 4), (512, 1024), (1, 7)):
        got = _max_given_lse(q, keys, 0.3, lse, valid, qmask, n, block, tile)
        torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)
    assert bool((ref[1, :, :4] == 0).all())


@pytest.mark.parametrize("window", [0, 12])
def test_without_the_cpu_flash_kernel_the_scores_are_the_same(model, window, monkeypatch):
    """Where the kernel that returns the logsumexp is missing (another device, a torch without it), the
    pass forms it from the logits: the same scores; the model's attention setting is restored either way."""
    ids, mask, _ = padded_batch()
    cache = _cache(model, ids, mask)
    impl = model.config._attn_implementation
    fast = reconstruction_scores(model, cache, ids, mask, PROMPT, 16, window, block=5)
    monkeypatch.setattr("tokenreduce.kv.kvzip._FLASH_CPU", None)
    slow = reconstruction_scores(model, cache, ids, mask, PROMPT, 16, window, block=5)
    for a, b in zip(fast, slow, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    assert model.config._attn_implementation == impl


@pytest.mark.parametrize("window", [0, 12])
def test_unpadded_rows_take_the_maskless_kernel_and_score_the_same(model, window, monkeypatch):
    """Rows without padding: the kernel runs without a mask (stored entries, then the new ones causal, joined
    by their logsumexps); the scores equal the former pass's."""
    import tokenreduce.kv.kvzip as kz

    ids = random_ids(2, 40, seed=7)
    mask = torch.ones_like(ids)
    cache = _cache(model, ids, mask)
    calls = []

    def counting(*args, **kwargs):
        calls.append(kwargs.get("attn_mask") is None)
        return flash(*args, **kwargs)

    flash = kz._FLASH_CPU
    monkeypatch.setattr(kz, "_FLASH_CPU", counting)
    new = reconstruction_scores(model, cache, ids, mask, PROMPT, 16, window, block=5)
    old = _old_scores(model, cache, ids, mask, PROMPT, 16, window)
    for a, b in zip(old, new, strict=True):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    assert calls and all(calls)
