"""Fuzz run (slow suite, ~5,500 cases): the stated properties of compress_prompt on adversarial text.

Properties (docs/PROMPT.md, tests/test_prompt_properties.py): an order-preserving subsequence made of whole
kept pieces that partition the text; within budget (re-tokenized) unless forced content or a single character
alone exceeds it (``over_budget``); protected spans kept or dropped whole unless the text was one protected
block over the budget (``protected_cut``); deterministic; valid UTF-8; never empty for a non-empty text;
the whole text when the budget covers it; a lone surrogate is refused with its index.
Run: ``python -m pytest -m slow tests/test_prompt_fuzz.py --hypothesis-show-statistics``.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tokenreduce.bench.encoder import default_model_path
from tokenreduce.prompt import PromptCompressor, TiktokenUnavailable, resolve_counter
from tokenreduce.prompt.bench_setup import tiktoken_dir
from tokenreduce.prompt.protect import find_protected

pytestmark = pytest.mark.slow
FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)

_words = st.text(st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), min_size=1, max_size=12)
_cjk = st.text(st.characters(min_codepoint=0x4E00, max_codepoint=0x9FFF), min_size=1, max_size=40)
_EMOJI = ["🙂", "👍🏽", "👩\u200d💻", "🇫🇷", "🇺🇸", "❤\ufe0f", "🧬", "e\u0301", "\u200d"]
_emoji = st.lists(st.sampled_from(_EMOJI), min_size=1, max_size=30).map("".join)
_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
).map(lambda v: json.dumps(v, ensure_ascii=False, separators=(",", ":")))
_long = st.tuples(st.sampled_from(["汉", "a", "🙂", "{", "[1,", "\u0301", "QUJD", "字。"]), st.integers(20, 400)).map(
    lambda t: t[0] * t[1]
)
_fixed = st.sampled_from(
    ["https://a.b/c?d=1", "ID-4f2a-99", '{"k": [1, 2, {"x": "y"}]}', "\n```\ncode here\n```\n", "\nBob:", "3.14,"]
)
_space = st.sampled_from([" ", "  ", "\n", "\n\n", ". ", "! ", "\t", "。", "\u3000"])
_pieces = st.one_of(_words, _cjk, _emoji, _json, _fixed, _space, _long)
texts = st.one_of(
    st.lists(_pieces, min_size=1, max_size=20).map("".join),
    _long,
    _json,
    st.text(st.sampled_from(" \t\n\u3000\u00a0"), min_size=1, max_size=200),  # whitespace only
)
_budget = st.one_of(
    st.floats(0.01, 1.0).map(lambda r: {"rate": r}), st.integers(1, 400).map(lambda t: {"target_tokens": t})
)
_protect = st.sampled_from([("json", "code", "url", "number", "speaker"), (), ("json",), ("url", "number")])

BERT = resolve_counter(str(default_model_path()))


def _counters():
    out = [BERT]
    try:
        out.append(resolve_counter("cl100k_base", tiktoken_dir=tiktoken_dir(None)))
    except (ValueError, TiktokenUnavailable):
        pass
    return out


COUNTERS = _counters()
COMPRESSORS = {
    (m, c.name): PromptCompressor(m, tokenizer=c, **({"seed": 3} if m == "random" else {}))
    for m in ("first", "random", "extractive")
    for c in COUNTERS
}


def _subseq(small: str, big: str) -> bool:
    it = iter(big)
    return all(ch in it for ch in small)


def check_properties(comp: PromptCompressor, text: str, question: str | None, budget: dict, protect) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = comp(text, question, protect=protect, **budget)
        again = comp(text, question, protect=protect, **budget)
    counter = comp.counter
    assert _subseq(r.text, text) and r.text == "".join(text[s:e] for s, e in r.kept_spans())
    assert r.offsets[0, 0] == 0 and r.offsets[-1, 1] == len(text)
    assert np.array_equal(r.offsets[1:, 0], r.offsets[:-1, 1])
    assert r.compressed_tokens == counter.count(r.text)
    assert r.over_budget or r.compressed_tokens <= r.target_tokens
    if r.target_tokens >= r.original_tokens:
        assert r.text == text
    assert r.text, "empty output for a non-empty text"
    r.text.encode("utf-8")
    m = r.char_mask()
    for spans in find_protected(text, [k for k in protect if k != "speaker"]).values():
        for s, e in spans:
            assert m[s:e].all() or not m[s:e].any() or r.protected_cut
    assert again.text == r.text and np.array_equal(again.keep, r.keep)


@settings(FUZZ, max_examples=4000)
@given(text=texts, budget=_budget, protect=_protect, method=st.sampled_from(["first", "random"]), data=st.data())
def test_fuzz_baselines(text, budget, protect, method, data):
    counter = data.draw(st.sampled_from([c.name for c in COUNTERS]))
    check_properties(COMPRESSORS[(method, counter)], text, None, budget, protect)


@settings(FUZZ, max_examples=1000)
@given(text=texts, question=st.none() | _words | _cjk, budget=_budget, protect=_protect, data=st.data())
def test_fuzz_extractive(text, question, budget, protect, data):
    counter = data.draw(st.sampled_from([c.name for c in COUNTERS]))
    check_properties(COMPRESSORS[("extractive", counter)], text, question, budget, protect)


@settings(FUZZ, max_examples=500)
@given(
    text=texts,
    where=st.floats(0, 1),
    bad=st.characters(min_codepoint=0xD800, max_codepoint=0xDFFF),
    method=st.sampled_from(["first", "random", "extractive"]),
)
def test_fuzz_lone_surrogate_is_refused(text, where, bad, method):
    i = int(where * len(text))
    with pytest.raises(ValueError, match=f"lone surrogate at index {i} "):
        COMPRESSORS[(method, BERT.name)](text[:i] + bad + text[i:], rate=0.5)
