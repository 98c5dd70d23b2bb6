"""DuoAttention-style heads: calibration scores equal eager attention weights on the synthetic retrieval prompts,
heads saved and reloaded exactly, streaming heads hold sinks + recent and retrieval heads everything at the
DuoAttention budget (ragged storage), on-the-fly ranking equals a direct computation, keep=1 exact, bad
parameters, files and models refused. kvpress's DuoAttentionPress downloads patterns (or BookSum) and masks
attention instead of storing less, so the references here are written out in the test."""

from __future__ import annotations

import pytest
import torch
from kv_models import padded_batch, random_ids, tiny_lm
from kv_press_refs import layer_views

from tokenreduce.kv import DuoAttention, generate_ids, make_press
from tokenreduce.kv.bench import capture_prefill, press_cache
from tokenreduce.kv.calibrate import calibrate_duo, retrieval_prompts
from tokenreduce.kv.presses.duo_attention import save_heads, streaming_heads
from tokenreduce.kv.ragged import RaggedLayer


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def test_calibration_equals_eager_attention_weights():
    eager = tiny_lm("llama", impl="eager")
    got = calibrate_duo(eager, samples=3, length=64, needle=4, seed=5)
    want = torch.zeros_like(got)
    for ids, start in retrieval_prompts(97, 3, 64, 4, seed=5):
        with torch.no_grad():
            att = eager(input_ids=ids, output_attentions=True).attentions
        for layer, a in enumerate(att):
            hit = a[0, :, -1, start : start + 8].sum(-1)  # (H,)
            want[layer] += hit.view(2, 3).mean(1) / 3
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_heads_reload_and_streaming_heads_keep_only_sinks_and_recent(model, tmp_path):
    scores = calibrate_duo(model, samples=2, length=64, seed=1)
    path = tmp_path / "duo.safetensors"
    save_heads(path, scores)
    n, sinks, recent = 40, 2, 6
    streaming = 0.5
    keep = 1 - streaming * (1 - (sinks + recent) / n)
    press = DuoAttention(keep=keep, heads=str(path), streaming=streaming, stream_sinks=sinks, stream_recent=recent)
    assert press == make_press("duo_attention", keep=keep, heads=str(path), streaming=streaming, stream_sinks=sinks,
                               stream_recent=recent)
    mask = streaming_heads(scores, streaming)
    assert torch.equal(press._streaming, mask) and int(mask.sum()) == 3  # 3 of 6 KV heads
    cache = press_cache(model, capture_prefill(model, random_ids(1, n)), press)
    for layer in range(3):
        counts = cache.layers[layer].counts[0].tolist() if isinstance(cache.layers[layer], RaggedLayer) else [n, n]
        for h in range(2):
            if mask[layer, h]:
                assert counts[h] <= sinks + recent  # a layer with two streaming heads hands leftover budget back
            else:
                assert counts[h] == n or counts[h] >= n - (sinks + recent)


def test_exact_duo_budget_when_each_layer_has_one_streaming_head(model, tmp_path):
    scores = torch.tensor([[0.0, 1.0], [1.0, 0.0], [0.0, 1.0]])
    path = tmp_path / "duo.safetensors"
    save_heads(path, scores)
    n, sinks, recent = 40, 2, 6
    press = DuoAttention(keep=1 - 0.5 * (1 - (sinks + recent) / n), heads=str(path), stream_sinks=sinks,
                         stream_recent=recent)
    ids = random_ids(1, n)
    full = press_cache(model, capture_prefill(model, ids), None)
    cache = press_cache(model, capture_prefill(model, ids), press)
    for layer in range(3):
        r = cache.layers[layer]
        stream = int(scores[layer].argmin())
        assert r.counts[0].tolist()[stream] == sinks + recent and r.counts[0].tolist()[1 - stream] == n
        kept = r.k[0][stream]
        want = torch.cat([full.layers[layer].keys[0, stream, :sinks], full.layers[layer].keys[0, stream, -recent:]])
        torch.testing.assert_close(kept, want)


def test_on_the_fly_heads_are_the_least_far_reading(model):
    ids, mask, _ = padded_batch()
    press = DuoAttention(keep=0.5, streaming=0.5, stream_sinks=2, stream_recent=4, window=4)
    for view in layer_views(model, ids, mask):
        got = press.layer_streaming(view)
        for b in range(2):
            real = view.valid[b].nonzero().flatten()
            far = real[2:-4]
            a = view.window_attention(4)[b].mean(1)  # (H, N)
            score = a[:, far].sum(-1).view(2, 3).mean(1)
            assert got[b].tolist() == [bool(score[0] <= score[1]), bool(score[1] < score[0])]


def test_keep_one_is_exact(model):
    ids, mask, q = padded_batch()
    base = generate_ids(model, ids, mask, q, max_new_tokens=4)
    assert torch.equal(generate_ids(model, ids, mask, q, make_press("duo_attention", keep=1.0), max_new_tokens=4), base)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"streaming": 1.5}, "streaming must be in"), ({"stream_sinks": -1}, "stream_sinks must be in"),
    ({"stream_recent": -1}, "stream_recent must be in"), ({"window": 0}, "window"),
    ({"scorer": "adakv"}, "cannot score for duo_attention"), ({"min_share": 2.0}, "min_share"),
    ({"heads": "/nonexistent/duo.safetensors"}, "not found"),
])
def test_bad_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DuoAttention(keep=0.5, **kwargs)


def test_bad_files_and_models_are_refused(model, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"nope")
    with pytest.raises(ValueError, match="is not a DuoAttention heads file"):
        DuoAttention(heads=str(junk))
    path = tmp_path / "small.safetensors"
    save_heads(path, torch.zeros(2, 2))
    with pytest.raises(ValueError, match="calibrate on this model"):
        generate_ids(model, random_ids(1, 20), None, None, DuoAttention(keep=0.5, heads=str(path)), max_new_tokens=1)
    with pytest.raises(ValueError, match="length must be"):
        calibrate_duo(model, length=10)
