"""Perplexity-based and LongLLMLingua-style compression on a tiny random causal LM."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_prompt_lingua2 import _tokenizer

from tokenreduce.prompt import PromptCompressor
from tokenreduce.prompt.lm_scores import window_scores
from tokenreduce.prompt.methods.longllmlingua import LongLLMLingua
from tokenreduce.prompt.methods.perplexity import Perplexity

DOCS = [f"Document {i}: " + " ".join(f"tok{(i * 7 + k) % 11} word{k % 5}." for k in range(25)) for i in range(6)]


@pytest.fixture(scope="module")
def lm():
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = _tokenizer("bert")
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=1024,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).eval(), tok


def test_surprisal_matches_direct_computation(lm):
    model, tok = lm
    text = DOCS[0] + "\n\n" + DOCS[1]
    spans = [(0, len(DOCS[0])), (len(DOCS[0]) + 2, len(text))]
    offs, vals, _ = window_scores(model, tok, text, spans, window=30, sub_batch=1)
    offs3, vals3, _ = window_scores(model, tok, text, spans, window=30, sub_batch=3)
    np.testing.assert_allclose(vals, vals3, atol=1e-5)  # independent of batch composition / padding
    np.testing.assert_array_equal(offs, offs3)
    ids = tok(DOCS[0], add_special_tokens=False)["input_ids"][:30]
    x = torch.tensor([[tok.pad_token_id, *ids]])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=x).logits[0, :-1], -1)
    ref = -logp[torch.arange(len(ids)), torch.tensor(ids)].numpy()
    np.testing.assert_allclose(vals[: len(ids)], ref, atol=1e-5)


def test_question_nll_min_over_windows(lm):
    model, tok = lm
    text = "\n\n".join(DOCS[:2])
    spans = [(0, len(DOCS[0])), (len(DOCS[0]) + 2, len(text))]
    _, _, q_small = window_scores(model, tok, text, spans, window=20, question="tok3 word1?")
    assert q_small.shape == (2,) and np.isfinite(q_small).all()


@pytest.mark.parametrize("cls", [Perplexity, LongLLMLingua])
def test_budget_and_subsequence(lm, cls):
    """Within 2 tokens / 1 % of the target with the old word-level fill (``bind_protected=False``; every word of
    these documents has a digit, so binding protected spans to their sentence keeps sentences nearly whole);
    never over it either way."""
    scorer = cls(window=64).load(lm)
    for bind in (False, True):
        comp = PromptCompressor(scorer, tokenizer=lm[1], bind_protected=bind)
        assert comp.granularity == "token"
        for rate in (0.6, 0.25):
            r = comp(DOCS, "which document has tok3?", rate=rate)
            assert r.compressed_tokens <= r.target_tokens
            if not bind:
                assert r.target_tokens - max(2, 0.01 * r.target_tokens) <= r.compressed_tokens
            assert r.text == "".join(r.original[s:e] for s, e in r.kept_spans())


def test_longllmlingua_keeps_documents_in_rank_order(lm):
    model, tok = lm
    scorer = LongLLMLingua(window=64, w_token=0.0).load(lm)
    comp = PromptCompressor(scorer, tokenizer=tok)
    prep = comp.prepare(DOCS, "tok3 word1")
    spans = [(a, a + len(d)) for a, d in zip(np.cumsum([0] + [len(d) + 2 for d in DOCS[:-1]]), DOCS)]
    _, _, q = window_scores(model, tok, prep.seg.text, spans, window=64, question="tok3 word1")
    first_doc = prep.seg.doc[prep.plan.priority[0]]
    assert first_doc == int(np.argmin(q))
    docs_in_priority = list(dict.fromkeys(prep.seg.doc[prep.plan.priority].tolist()))
    assert docs_in_priority == list(np.argsort(q, kind="stable"))


@pytest.mark.slow
def test_smollm2_perplexity_drops_predictable_words():
    pytest.importorskip("gguf")
    from tokenreduce.llm import load_causal_lm

    try:
        lm = load_causal_lm()
    except (ModuleNotFoundError, FileNotFoundError) as e:
        pytest.skip(str(e))
    comp = PromptCompressor(Perplexity().load(lm), tokenizer=lm[1])
    text = "The capital of France is Paris. It is a city that is known for the Eiffel Tower and the Louvre."
    r = comp(text, rate=0.5)
    kept = r.text.split()
    # Selective-Context / LLMLingua keep what the LM finds surprising: the words the context makes
    # near-certain ("Paris" after "The capital of France is", "Tower" after "Eiffel") go first
    assert r.compressed_tokens <= r.target_tokens
    assert "Eiffel" in kept and not any(w.startswith(("Paris", "Tower")) for w in kept), r.text
