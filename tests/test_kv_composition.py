"""Presses compose as objects (``AdaKV(scorer=SnapKV(window=64, kernel=11))``), capabilities are declared
by type, and impossible combinations fail at construction naming why."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from kv_models import padded_batch, tiny_lm

import tokenreduce.kv as kv
from tokenreduce.kv import (
    H2O,
    TOVA,
    AdaKV,
    DecodeTimePress,
    DecodingPress,
    Keyformer,
    KeyNorm,
    KVzip,
    MixedPrecisionPress,
    PyramidKV,
    RaggedPress,
    ReconstructionPress,
    ScoringPress,
    SnapKV,
    ZipCache,
    apply_press,
    generate_ids,
    make_press,
    presses,
)
from tokenreduce.kv.presses import label, parse_press

KV_SRC = Path(kv.__file__).parent


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


# (object, the same press by name and parameters)
SAME = [
    (AdaKV(keep=0.3, scorer=SnapKV(window=8, kernel=11)), ("adakv", {"keep": 0.3, "window": 8, "kernel": 11})),
    (AdaKV(keep=0.3, scorer=TOVA(), min_share=0.5), ("adakv", {"keep": 0.3, "scorer": "tova", "min_share": 0.5})),
    (PyramidKV(keep=0.4, scorer=Keyformer(window=6)), ("pyramidkv", {"keep": 0.4, "scorer": "keyformer", "window": 6})),
    (PyramidKV(keep=0.4, scorer=H2O()), ("pyramidkv", {"keep": 0.4, "scorer": "h2o"})),
    (DecodingPress(keep=0.7, scorer=SnapKV(window=4), target=12, interval=2),
     ("decoding", {"keep": 0.7, "scorer": SnapKV(window=4), "target": 12, "interval": 2})),
    (DecodingPress(scorer=KeyNorm(), target=12, interval=2), ("decoding", {"target": 12, "interval": 2})),
    (ZipCache(keep=0.6, scorer=H2O(), bits=8, group=8), ("zipcache", {"keep": 0.6, "scorer": "h2o", "bits": 8,
                                                                     "group": 8})),
]


@pytest.mark.parametrize(("obj", "named"), SAME, ids=[label(o) for o, _ in SAME])
def test_composition_by_object_equals_composition_by_name(model, obj, named):
    name, params = named
    by_name = make_press(name, **params)
    assert obj == by_name
    assert isinstance(obj.scorer, ScoringPress) and obj.scorer.keep == obj.keep  # budgets are the outer press's
    ids, mask, q = padded_batch()
    a = generate_ids(model, ids, mask, q, obj, max_new_tokens=5)
    b = generate_ids(model, ids, mask, q, by_name, max_new_tokens=5)
    assert torch.equal(a, b)


def test_spec_builds_the_same_press_and_label():
    press = parse_press("adakv:kernel=11", 0.25)
    assert press == AdaKV(keep=0.25, scorer=SnapKV(kernel=11))
    assert label(press) == "adakv(kernel=11)"  # the default scorer's parameters read as in the spec
    assert label(parse_press("adakv:scorer=tova", 0.25)) == "adakv(scorer=tova)"
    assert label(AdaKV(scorer=Keyformer(window=6))) == "adakv(scorer=keyformer(window=6))"
    assert label(make_press("zipcache")) == "zipcache"


BAD_SCORERS = [
    ("kvzip", "second pass"),
    ("adakv", "redistributes the budget"),
    ("pyramidkv", "redistributes the budget"),
    ("decoding", "compresses during decoding"),
    ("zipcache", "mixed precision"),
]


@pytest.mark.parametrize("outer", ["adakv", "pyramidkv", "decoding", "zipcache"])
@pytest.mark.parametrize(("scorer", "why"), BAD_SCORERS)
def test_impossible_scorer_fails_at_construction_with_the_reason(outer, scorer, why):
    for given in (scorer, make_press(scorer, keep=0.5)):  # by name and as an object
        with pytest.raises(ValueError, match=f"{outer}: scorer {scorer} cannot score for {outer}: .*{why}"):
            make_press(outer, keep=0.5, scorer=given)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"scorer": SnapKV(), "window": 8}, "window only apply to a scorer given by name"),
    ({"scorer": SnapKV(), "kernel": 11}, "kernel only apply to a scorer given by name"),
    ({"scorer": "tova", "kernel": 11}, "scorer tova has no kernel"),
    ({"scorer": SnapKV(sinks=4)}, "set sinks/recent on adakv, not on its scorer"),
    ({"scorer": 3}, "scorer must be a press or a press name"),
    ({"scorer": "nope"}, "unknown press"),
    ({"window": True}, "window must be an int"),
])
def test_ambiguous_or_silent_parameters_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        AdaKV(keep=0.5, **kwargs)


def test_capabilities_are_declared_types():
    assert {n for n in presses() if isinstance(make_press(n, keep=0.5), ScoringPress)} == set(presses()) - {"kvzip"}
    assert isinstance(make_press("kvzip", keep=0.5), ReconstructionPress)
    assert isinstance(AdaKV(), RaggedPress) and isinstance(PyramidKV(), RaggedPress) and AdaKV().ragged
    assert isinstance(KVzip(), RaggedPress) and not KVzip(budget="layer").ragged
    assert isinstance(DecodingPress(), DecodeTimePress)
    assert isinstance(ZipCache(), MixedPrecisionPress)
    assert not SnapKV().ragged


def test_runner_state_changes_only_through_its_api(model):
    ids, mask, _ = padded_batch()
    with apply_press(model, SnapKV(keep=0.5), auto=False) as runner:
        assert runner.auto is False
        with pytest.raises(AttributeError):
            runner.auto = True  # type: ignore[misc]
        with torch.no_grad():
            full = model(input_ids=ids, attention_mask=mask, use_cache=True).cache  # auto=False: not compressed
            runner.compress_next()
            small = model(input_ids=ids, attention_mask=mask, use_cache=True).cache
    assert small.get_seq_length() < full.get_seq_length() == ids.shape[1]


def test_no_capability_probing_and_no_function_level_imports_in_kv():
    probe = re.compile(r"getattr\(press|hasattr\(self\.press|hasattr\(press")
    inner_import = re.compile(r"^[ \t]+from \.(?!\.(bench|cli_errors|llm)\b)", re.M)  # kv/bench, kv/cli keep theirs
    for path in KV_SRC.rglob("*.py"):
        text = path.read_text()
        assert not probe.search(text), path
        assert not inner_import.search(text), path
