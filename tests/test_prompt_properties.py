"""Property tests (hypothesis): subsequence, protected spans intact, determinism, Unicode, budget."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenreduce.bench.encoder import default_model_path
from tokenreduce.prompt import PromptCompressor, resolve_counter
from tokenreduce.prompt.protect import find_protected

COUNTER = resolve_counter(str(default_model_path()))
RANDOM = PromptCompressor("random", tokenizer=COUNTER)
FIRST = PromptCompressor("first", tokenizer=COUNTER)

_words = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=12
)
_pieces = st.one_of(
    _words,
    st.sampled_from(
        ["https://a.b/c?d=1", "ID-4f2a-99", '{"k": [1, 2, {"x": "y"}]}', "\n```\ncode here\n```\n", "\nBob:", "3.14,"]
    ),
    st.sampled_from([" ", "  ", "\n", "\n\n", ". ", "! ", "\t"]),
)
texts = st.lists(_pieces, min_size=1, max_size=40).map("".join)


def _subseq(small: str, big: str) -> bool:
    it = iter(big)
    return all(ch in it for ch in small)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=texts, rate=st.floats(0.05, 1.0), seed=st.integers(0, 3))
def test_properties(text, rate, seed):
    comp = RANDOM if seed else FIRST
    r = comp(text, rate=rate)
    # order-preserving subsequence made of whole kept pieces
    assert _subseq(r.text, text)
    assert r.text == "".join(text[s:e] for s, e in r.kept_spans())
    # pieces partition the text
    assert r.offsets[0, 0] == 0 if len(r.offsets) else True
    assert np.array_equal(r.offsets[1:, 0], r.offsets[:-1, 1])
    # budget (unless forced content alone is over it) and exact re-tokenized count
    assert r.compressed_tokens == COUNTER.count(r.text)
    assert r.over_budget or r.compressed_tokens <= r.target_tokens
    # protected spans are kept whole or dropped whole (unless the text was one protected block over the budget:
    # never empty wins, and the result says so)
    m = r.char_mask()
    for spans in find_protected(text, ["json", "code", "url", "number"]).values():
        for s, e in spans:
            assert m[s:e].all() or not m[s:e].any() or r.protected_cut
    # deterministic
    r2 = comp(text, rate=rate)
    assert r2.text == r.text and np.array_equal(r2.keep, r.keep)


@settings(max_examples=20, deadline=None)
@given(text=texts)
def test_rate_one_is_identity(text):
    r = RANDOM(text, rate=1.0)
    assert r.text == text


@pytest.mark.parametrize("rate", [0.2, 0.5])
def test_unicode_scripts(rate):
    text = "Привет мир. 你好，世界。 مرحبا بالعالم. नमस्ते दुनिया. 🙂 emoji👍🏽 ok. e\u0301 combining."
    r = RANDOM(text, rate=rate)
    assert _subseq(r.text, text) and r.compressed_tokens <= r.target_tokens
    r.text.encode("utf-8")  # no split surrogates / broken code points
