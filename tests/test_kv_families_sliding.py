"""Presses on models with sliding-window layers (Gemma 2, Gemma 3, Qwen2 with use_sliding_window; window 8,
contexts of 40+ tokens so the window matters): full-attention layers are compressed, sliding layers left as
transformers keeps them, and a token outside the window stays invisible after compression."""

from __future__ import annotations

import pytest
import torch
from kv_models import (
    SLIDING,
    assert_keep_one_exact_and_loops_agree,
    compressed_session,
    padded_batch,
    random_ids,
    tiny_mistral_sliding,
    tiny_sliding_lm,
)

from tokenreduce.kv import apply_press, generate_ids, kv_bytes, make_press
from tokenreduce.kv import cache as kvc

FAMILIES = list(SLIDING)
BATCH_SPECS = {  # every press kind: dense scoring, ragged, mixed precision, decode-time
    "snapkv": {"window": 4}, "h2o": {}, "streaming_llm": {"sinks": 2, "recent": 4}, "adakv": {"window": 4},
    "pyramidkv": {"window": 4}, "zipcache": {"bits": 4, "group": 8}, "decoding": {"target": 12, "interval": 2},
}


@pytest.fixture(scope="module")
def models():
    return {f: tiny_sliding_lm(f) for f in FAMILIES}


@pytest.mark.parametrize("family", FAMILIES)
def test_keep_one_is_exact_through_model_generate_and_generate_ids(models, family):
    assert_keep_one_exact_and_loops_agree(models[family])



@pytest.mark.parametrize("family", FAMILIES)
def test_compressed_cache_equals_masking_the_dropped_tokens(models, family):
    """StreamingLLM keeps 3 sinks + the last 17 of 48 tokens in the full-attention layers. Reference: the
    unpressed model with the dropped tokens masked out. The window (8) lies inside the recent tokens, so the
    reference's sliding layers see exactly the window -- and so must ours: the sinks, kept for the
    full-attention layers, are outside the window and stay invisible to the sliding layers."""
    m = models[family]
    n, sinks, k = 48, 3, 20
    ids, cont = random_ids(1, n), random_ids(1, 6, seed=3)
    s = compressed_session(m, ids, make_press("streaming_llm", keep=0.4, sinks=sinks))
    got = s.feed(cont)
    ref_mask = torch.zeros(1, n + 6, dtype=torch.long)
    ref_mask[0, :sinks] = 1
    ref_mask[0, n - (k - sinks):] = 1
    pos = torch.arange(n + 6)[None]
    with torch.no_grad():
        full = m(input_ids=ids, position_ids=pos[:, :n], use_cache=True)
        ref = m(input_ids=cont, attention_mask=ref_mask, position_ids=pos[:, n:], cache=full.cache).logits
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    window = m.config.sliding_window
    for i in range(kvc.n_layers(s.cache)):
        if kvc.is_sliding(s.cache, i):  # left alone: the last window - 1 tokens
            assert s.cache.layers[i].keys.shape[2] == window - 1
        else:
            assert kvc.layer_kv(s.cache, i)[0].shape[2] == k + 6
    # handing the sliding layers the compressed layers' mask (entries, not tokens) changes the result
    with torch.no_grad():
        wrong = m(input_ids=cont, attention_mask=kvc.rewrite_mask(s.cache, ref_mask)[:, -(k + 6):],
                  position_ids=pos[:, n:], cache=compressed_session(m, ids, make_press(
                      "streaming_llm", keep=0.4, sinks=sinks)).cache).logits
    assert not torch.allclose(got, wrong, atol=1e-3)


@pytest.mark.parametrize("family", FAMILIES)
def test_only_full_attention_layers_shrink(models, family):
    m = models[family]
    ids = random_ids(1, 100)
    full = compressed_session(m, ids, make_press("snapkv", keep=1.0)).cache
    quarter = compressed_session(m, ids, make_press("snapkv", keep=0.25)).cache
    sliding = [i for i in range(kvc.n_layers(full)) if kvc.is_sliding(full, i)]
    per_layer = kv_bytes(full) // kvc.n_layers(full)  # full layers hold 100 entries, sliding ones 7
    slide_bytes = sum(full.layers[i].keys.numel() * 2 * full.layers[i].keys.element_size() for i in sliding)
    n_full = kvc.n_layers(full) - len(sliding)
    full_bytes = (kv_bytes(full) - slide_bytes) // n_full
    assert per_layer > 0 and kv_bytes(quarter) == slide_bytes + n_full * full_bytes * 25 // 100


@pytest.mark.parametrize("aware", [False, True], ids=["question-after", "query-aware"])
@pytest.mark.parametrize("name", sorted(BATCH_SPECS))
def test_batch_rows_equal_single_rows(models, name, aware):
    """Left-padded rows of different lengths (past the window) generate as each row alone, logits within 1e-5.

    Question-after, the questions have one length: a left-padded question block would put padding in the
    middle of a row, where it takes sliding-window slots (transformers' window counts columns, and its
    sliding cache keeps the last columns) -- the unpressed model differs there too. Query-aware prefill packs
    each row's padding to the left, so its questions differ in length."""
    press = make_press(name, keep=0.4, **BATCH_SPECS[name])
    lengths = [(40, 3), (23, 9)] if aware else [(40, 5), (23, 5)]
    ctx, qs = random_ids(2, 40, seed=3), random_ids(2, max(q for _, q in lengths), seed=4)
    cm, qm = torch.zeros_like(ctx), torch.zeros_like(qs)
    for b, (c, q) in enumerate(lengths):
        cm[b, -c:], qm[b, -q:] = 1, 1
    for family in FAMILIES if name == "snapkv" else ["qwen2_sliding"]:  # key norms tie under Gemma 3's k_norm
        m = models[family]
        both, logits = generate_ids(m, ctx * cm, cm, qs * qm, press, question_mask=qm, query_aware=aware,
                                    max_new_tokens=5, output_logits=True)
        for b, (c, q) in enumerate(lengths):
            one, one_logits = generate_ids(m, ctx[b:b + 1, -c:], None, qs[b:b + 1, -q:], press, query_aware=aware,
                                           max_new_tokens=5, output_logits=True)
            assert torch.equal(both[b:b + 1], one), (family, name, b)
            torch.testing.assert_close(logits[b:b + 1], one_logits, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", FAMILIES)
def test_chunked_prefill_matches_one_shot(models, family):
    """Chunks of 16 run past the window of 8 before the press compresses after the last one (keep 0.9:
    no row exceeds its budget before the last chunk, so nothing is compressed earlier)."""
    m = models[family]
    ids, mask, q = padded_batch()
    for press in (None, make_press("key_norm", keep=0.9), make_press("streaming_llm", keep=0.9)):
        one = generate_ids(m, ids, mask, q, press, max_new_tokens=6)
        assert torch.equal(one, generate_ids(m, ids, mask, q, press, max_new_tokens=6, chunk_size=16))


def test_every_layer_sliding_is_refused_before_compute():
    m = tiny_mistral_sliding()
    ids, mask, q = padded_batch()
    calls = []
    handle = m.register_forward_pre_hook(lambda *a: calls.append(1))
    with pytest.raises(ValueError, match="every layer keeps a sliding window of 8 tokens.*Supported: .*Gemma 2/3"):
        generate_ids(m, ids, mask, q, make_press("snapkv", keep=0.5))
    with pytest.raises(ValueError, match="nothing to press"), apply_press(m, make_press("tova", keep=0.5)):
        pass
    handle.remove()
    assert not calls
    assert torch.equal(generate_ids(m, ids, mask, q, max_new_tokens=3), generate_ids(m, ids, mask, q, max_new_tokens=3))


def test_kvzip_is_refused_on_sliding_layers(models):
    ids, mask, q = padded_batch()
    with pytest.raises(ValueError, match="kvzip reads every layer's cache"):
        generate_ids(models["gemma2"], ids, mask, q, make_press("kvzip", keep=0.5))


def test_ragged_presses_are_refused_with_logit_softcapping(models):
    ids, mask, q = padded_batch()
    for name in ("adakv", "pyramidkv"):
        with pytest.raises(ValueError, match="no logit soft-capping"):
            generate_ids(models["gemma2"], ids, mask, q, make_press(name, keep=0.5))


def test_vlm_with_a_sliding_language_model_is_refused():
    """Gemma 3's vision-language wrapper builds the per-layer masks itself, over tokens: refused up front."""
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    text = Gemma3TextConfig(vocab_size=300, hidden_size=48, intermediate_size=96, num_hidden_layers=2,
                            num_attention_heads=6, num_key_value_heads=2, head_dim=8, sliding_window=8)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                image_size=28, patch_size=14)
    vlm = Gemma3ForConditionalGeneration(Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                                                      image_token_index=299, boi_token_index=297,
                                                      eoi_token_index=298))
    with pytest.raises(ValueError, match="language model has sliding-window layers"), \
            apply_press(vlm, make_press("snapkv", keep=0.5)):
        pass
