"""Presses on attention variants beyond Llama's: fused projections (GPT-2: c_attn + absolute positions;
GPT-NeoX: query_key_value + partial rotary; Phi-3: qkv_proj) and OLMo 2's q/k norm over the whole
projection, whose queries are recorded from the attention call (kv/capture.py); Qwen3's per-head q/k norm
and Llama-3 rope scaling, recomputed from q_proj as for Llama."""

from __future__ import annotations

import pytest
import torch
from kv_models import (
    FUSED,
    NORMED,
    assert_keep_one_exact_and_loops_agree,
    compressed_session,
    padded_batch,
    random_ids,
    tiny_fused_lm,
    tiny_normed_lm,
)

from tokenreduce.kv import cache as kvc
from tokenreduce.kv import generate_ids, make_press

BUILD = {**dict.fromkeys(FUSED, tiny_fused_lm), **dict.fromkeys(NORMED, tiny_normed_lm)}
FAMILIES = list(BUILD)
BATCH_SPECS = {
    "snapkv": {"window": 4}, "h2o": {}, "tova": {}, "keyformer": {"window": 4}, "adakv": {"window": 4},
    "pyramidkv": {"window": 4}, "zipcache": {"bits": 4, "group": 8}, "decoding": {"target": 12, "interval": 2},
}
BATCH_FAMILY = {  # besides SnapKV on every family, each press kind on one family whose queries are recorded
    "h2o": "gpt2", "adakv": "gpt2", "tova": "gpt_neox", "pyramidkv": "gpt_neox", "zipcache": "phi3",
    "keyformer": "phi3", "decoding": "olmo2",
}


@pytest.fixture(scope="module")
def models():
    return {f: BUILD[f](f) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_one_is_exact_through_model_generate_and_generate_ids(models, family):
    m = models[family]
    assert_keep_one_exact_and_loops_agree(m)
    assert m.config._attn_implementation == "sdpa"  # restored after the blocks



@pytest.mark.parametrize("family", FAMILIES)
def test_compressed_cache_equals_masking_the_dropped_tokens(models, family):
    m = models[family]
    n, sinks, k = 48, 3, 20
    ids, cont = random_ids(1, n), random_ids(1, 6, seed=3)
    s = compressed_session(m, ids, make_press("streaming_llm", keep=0.4, sinks=sinks))
    got = s.feed(cont)
    assert kvc.seq_length(s.cache) == k + 6
    ref_mask = torch.zeros(1, n + 6, dtype=torch.long)
    ref_mask[0, :sinks] = 1
    ref_mask[0, n - (k - sinks):] = 1
    pos = torch.arange(n + 6)[None]
    with torch.no_grad():
        full = m(input_ids=ids, position_ids=pos[:, :n], use_cache=True)
        ref = m(input_ids=cont, attention_mask=ref_mask, position_ids=pos[:, n:], cache=full.cache).logits
        full = m(input_ids=ids, position_ids=pos[:, :n], use_cache=True)
        wrong = m(input_ids=cont, attention_mask=ref_mask, position_ids=pos[:, n:] - (n - k), cache=full.cache).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert not torch.allclose(got, wrong, atol=1e-3)  # positions matter (absolute or rotary): the test can fail


def _eager_snapkv(attn_weights, hkv, window, kernel, k):
    a = attn_weights[0, :, -window:, :].mean(1)
    a = torch.nn.functional.max_pool1d(a[:, None], kernel, 1, kernel // 2)[:, 0]
    a = a.view(hkv, -1, a.shape[-1]).mean(1)
    a[:, -window:] = float("inf")
    return a.sort(dim=-1, descending=True, stable=True).indices[:, :k].sort(-1).values


@pytest.mark.parametrize("family", FAMILIES)
def test_queries_score_like_eager_attention(models, family):
    """SnapKV from the recorded (or recomputed) queries keeps what the eager attention weights say, on SDPA
    and on eager models."""
    eager = BUILD[family](family, impl="eager")
    n, window, k = 60, 8, 18
    ids = random_ids(1, n, seed=5)
    with torch.no_grad():
        out = eager(input_ids=ids, output_attentions=True, use_cache=True)
    for m in (models[family], eager):
        s = compressed_session(m, ids, make_press("snapkv", keep=0.3, window=window, kernel=5))
        for layer, att in enumerate(out.attentions):
            full_keys, _ = kvc.layer_kv(out.cache, layer)
            small_keys, _ = kvc.layer_kv(s.cache, layer)
            d = torch.cdist(small_keys[0], full_keys[0])
            assert bool((d.min(-1).values < 1e-2).all())
            assert torch.equal(d.argmin(-1), _eager_snapkv(att, full_keys.shape[1], window, 5, k)), (family, layer)


@pytest.mark.parametrize("name", sorted(BATCH_SPECS))
def test_batch_rows_equal_single_rows(models, name):
    """Contexts and questions of different lengths, left-padded in one batch, generate as each row alone."""
    press = make_press(name, keep=0.4, **BATCH_SPECS[name])
    lengths = [(40, 3), (23, 9)]
    ctx, qs = random_ids(2, 40, seed=3), random_ids(2, 9, seed=4)
    cm, qm = torch.zeros_like(ctx), torch.zeros_like(qs)
    for b, (c, q) in enumerate(lengths):
        cm[b, -c:], qm[b, -q:] = 1, 1
    for family in FAMILIES if name == "snapkv" else [BATCH_FAMILY[name]]:
        m = models[family]
        both, logits = generate_ids(m, ctx * cm, cm, qs * qm, press, question_mask=qm, max_new_tokens=5,
                                    output_logits=True)
        for b, (c, q) in enumerate(lengths):
            one, one_logits = generate_ids(m, ctx[b:b + 1, -c:], None, qs[b:b + 1, -q:], press, max_new_tokens=5,
                                           output_logits=True)
            assert torch.equal(both[b:b + 1], one), (family, name, b)
            torch.testing.assert_close(logits[b:b + 1], one_logits, atol=1e-5, rtol=0)


def test_untested_and_second_pass_methods_are_refused_before_compute(models):
    from transformers import FalconConfig, FalconForCausalLM

    falcon = FalconForCausalLM(FalconConfig(vocab_size=97, hidden_size=48, num_hidden_layers=2,
                                            num_attention_heads=6)).eval()
    ids, mask, q = padded_batch()
    with pytest.raises(ValueError, match=r"GPT-NeoX/Falcon \(fused query_key_value\) is not supported by a press.*"
                                         r"supported: .*GPT-2, GPT-NeoX, Phi-3 and OLMo 2"):
        generate_ids(falcon, ids, mask, q, make_press("snapkv", keep=0.5))
    with pytest.raises(ValueError, match=r"GPT-2 .* not supported by this method \(kvzip"):
        generate_ids(models["gpt2"], ids, mask, q, make_press("kvzip", keep=0.5))
    with pytest.raises(ValueError, match=r"spans the whole projection \(OLMo 2\), which this method \(kvzip"):
        generate_ids(models["olmo2"], ids, mask, q, make_press("kvzip", keep=0.5))
