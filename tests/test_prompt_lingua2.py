"""LLMLingua-2-compatible token classification with tiny random XLM-R and BERT configurations."""

from __future__ import annotations

import string

import numpy as np
import pytest
import torch

from tokenreduce.prompt import PromptCompressor
from tokenreduce.prompt.lm_scores import aggregate_to_pieces
from tokenreduce.prompt.methods.llmlingua2 import LLMLingua2, chunk_tokens, keep_probs, special_affixes
from tokenreduce.prompt.segment import segment

TEXT = " ".join(f"word{i % 7} alpha{i % 5}, beta. 12{i}" for i in range(45)) + " https://x.org/a end"


def _tokenizer(style: str):
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordPiece
    from transformers import PreTrainedTokenizerFast

    cls, sep, pad, unk = ("<s>", "</s>", "<pad>", "<unk>") if style == "xlmr" else ("[CLS]", "[SEP]", "[PAD]", "[UNK]")
    chars = string.ascii_letters + string.digits + string.punctuation
    vocab = [pad, unk, cls, sep] + list(chars) + ["##" + c for c in chars] + ["word", "alpha", "beta"]
    t = Tokenizer(WordPiece({v: i for i, v in enumerate(vocab)}, unk_token=unk, max_input_chars_per_word=100))
    t.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    t.post_processor = processors.TemplateProcessing(
        single=f"{cls} $A {sep}", special_tokens=[(cls, vocab.index(cls)), (sep, vocab.index(sep))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=t, cls_token=cls, sep_token=sep, pad_token=pad, unk_token=unk)


def _model(style: str, vocab_size: int):
    torch.manual_seed(0)
    kw = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=600,
        num_labels=2,
    )
    if style == "xlmr":
        from transformers import XLMRobertaConfig, XLMRobertaForTokenClassification

        return XLMRobertaForTokenClassification(XLMRobertaConfig(**kw, pad_token_id=0)).eval()
    from transformers import BertConfig, BertForTokenClassification

    return BertForTokenClassification(BertConfig(**kw, pad_token_id=0)).eval()


@pytest.fixture(scope="module", params=["xlmr", "bert"])
def setup(request):
    tok = _tokenizer(request.param)
    return request.param, tok, _model(request.param, len(tok))


def test_special_tokens_per_family(setup):
    style, tok, _ = setup
    pre, suf = special_affixes(tok)
    expect = ("<s>", "</s>") if style == "xlmr" else ("[CLS]", "[SEP]")
    assert tok.convert_ids_to_tokens(pre + suf) == list(expect)


def test_chunks_respect_words_and_limit():
    owner = np.repeat(np.arange(50), np.random.default_rng(0).integers(1, 6, 50))
    chunks = chunk_tokens(owner, 16)
    assert chunks[0][0] == 0 and chunks[-1][1] == len(owner)
    assert all(e - s <= 16 for s, e in chunks)
    assert all(s2 == e1 for (_, e1), (s2, _) in zip(chunks, chunks[1:]))
    assert all(owner[s] != owner[s - 1] for s, _ in chunks[1:])  # no word split across chunks


def test_chunked_probs_match_manual_forward_and_batching(setup):
    _, tok, model = setup
    ids = tok(TEXT, add_special_tokens=False)["input_ids"]
    chunks = chunk_tokens(np.arange(len(ids)) // 3, 40)
    p1 = keep_probs(model, tok, ids, chunks, sub_batch=1)
    p3 = keep_probs(model, tok, ids, chunks, sub_batch=3)
    np.testing.assert_allclose(p1, p3, atol=1e-5)  # padding / batch composition does not matter
    s, e = chunks[1]
    full = tok.build_inputs_with_special_tokens(ids[s:e]) if hasattr(tok, "build_inputs_with_special_tokens") else None
    pre, suf = special_affixes(tok)
    x = torch.tensor([pre + ids[s:e] + suf])
    if full is not None:
        assert full == x[0].tolist()
    with torch.no_grad():
        ref = torch.softmax(model(input_ids=x).logits, -1)[0, len(pre) : len(pre) + e - s, 1].numpy()
    np.testing.assert_allclose(p1[s:e], ref, atol=1e-5)


def test_word_aggregation_matches_loop():
    rng = np.random.default_rng(1)
    starts = np.array([0, 4, 9, 15, 20])
    offs = np.array([[0, 2], [2, 4], [4, 9], [9, 12], [12, 15], [20, 23]])
    vals = rng.random(len(offs))
    got = aggregate_to_pieces(starts, offs, vals, len(starts))
    ref = []
    for i, s in enumerate(starts):
        e = starts[i + 1] if i + 1 < len(starts) else 10**9
        v = [vals[k] for k, (a, b) in enumerate(offs) if s <= b - 1 < e]
        ref.append(np.mean(v) if v else np.nan)
    np.testing.assert_allclose(got, ref)


def test_global_budget_and_structure(setup):
    _, tok, model = setup
    scorer = LLMLingua2(chunk_tokens=64).load((model, tok))
    for bind in (False, True):  # within 2 tokens with the old word-level fill; every sentence here has numbers
        comp = PromptCompressor(scorer, tokenizer=tok, bind_protected=bind)
        for rate in (0.5, 0.2):
            r = comp(TEXT, rate=rate)
            assert r.compressed_tokens <= r.target_tokens
            if not bind:
                assert r.target_tokens <= r.compressed_tokens + max(2, 0.01 * r.target_tokens)
            assert "https://x.org/a" in r.text or "x.org" not in r.text
    seg = segment(TEXT, [])
    scores = comp.scorer.piece_scores(seg)
    assert scores.shape == (len(seg),) and np.isfinite(scores).all()


def test_needs_local_model():
    with pytest.raises(ValueError, match="local folder"):
        LLMLingua2().load()
