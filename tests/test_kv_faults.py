"""Faults a hostile user found in the KV API: silent no-ops, late or misleading errors (issue 13).

Each bad input must fail at construction (or before any forward), naming the parameter and the fix.
"""

from __future__ import annotations

import warnings

import pytest
import torch
from kv_models import random_ids, tiny_lm

from tokenreduce.kv import apply_press, generate_ids, kv_bytes, make_press
from tokenreduce.kv.presses.base import parse_press


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


BAD_PRESSES = [
    ("snapkv", {"kernel": 4}, "kernel must be an odd int"),
    ("snapkv", {"kernel": 0}, "kernel must be an odd int"),
    ("snapkv", {"kernel": -3}, "kernel must be an odd int"),
    ("snapkv", {"kernel": 2.5}, "kernel must be an int"),
    ("snapkv", {"window": 0}, r"window must be in \[1, inf\)"),
    ("snapkv", {"window": "x"}, "window must be an int"),
    ("snapkv", {"keep": True}, "keep must be a real number"),
    ("snapkv", {"keep": "0.5"}, "keep must be a real number"),
    ("snapkv", {"keep": float("nan")}, "keep must be a real number"),
    ("snapkv", {"keep": 0.0}, r"keep must be in \(0, 1\]"),
    ("adakv", {"kernel": 4}, "kernel must be an odd int"),
    ("pyramidkv", {"window": 0}, "window must be in"),
    ("keyformer", {"window": -1}, "window must be in"),
    ("random", {"seed": "abc"}, "seed must be an int"),
    ("random", {"seed": 1.5}, "seed must be an int"),
    ("decoding", {"interval": "x"}, "interval must be an int"),
    ("decoding", {"target": True}, "target must be an int"),
    ("zipcache", {"key_channels": 1}, "key_channels must be a bool"),
    ("streaming_llm", {"sinks": -1}, "sinks must be a non-negative int"),
    ("h2o", {"recent_share": "half"}, "recent_share must be a real number"),
]


@pytest.mark.parametrize(("name", "params", "message"), BAD_PRESSES)
def test_bad_press_parameters_fail_at_construction(name, params, message):
    with pytest.raises(ValueError, match=message):
        make_press(name, **params)


def test_spec_grammar_reads_booleans():
    assert parse_press("zipcache:key_channels=true:group=8", keep=1.0).key_channels is True
    with pytest.raises(ValueError, match="kernel must be an odd int"):
        parse_press("snapkv:kernel=4", keep=0.5)


def test_model_call_with_use_cache_compresses(model):
    """``model(**enc, use_cache=True)`` inside apply_press compresses the cache it returns (it used to
    create its own cache after our hook looked, so nothing was compressed)."""
    ids = random_ids(1, 40)
    with torch.no_grad():
        full = model(input_ids=ids, use_cache=True).cache
        with apply_press(model, make_press("snapkv", keep=0.25, window=4)):
            small = model(input_ids=ids, use_cache=True).cache
            plain = model(input_ids=ids)  # config.use_cache is on: the model caches, so we compress
            off = model(input_ids=ids, use_cache=False)
    assert kv_bytes(small) == kv_bytes(full) // 4
    assert kv_bytes(plain.cache) == kv_bytes(full) // 4
    assert off.cache is None


def test_empty_context_is_named(model):
    with pytest.raises(ValueError, match="context is empty"):
        generate_ids(model, torch.zeros(1, 0, dtype=torch.long), max_new_tokens=2)
    ids = random_ids(2, 5)
    mask = torch.ones_like(ids)
    mask[1] = 0
    with pytest.raises(ValueError, match=r"context is empty \(rows \[1\]\)"):
        generate_ids(model, ids, mask, max_new_tokens=2)


@pytest.mark.parametrize(("kw", "message"), [
    ({"chunk_size": 0}, "chunk_size must be None"), ({"chunk_size": 2.5}, "chunk_size must be None"),
    ({"max_new_tokens": 0}, "max_new_tokens must be an int"), ({"max_new_tokens": True}, "max_new_tokens"),
])
def test_bad_generation_arguments(model, kw, message):
    with pytest.raises(ValueError, match=message):
        generate_ids(model, random_ids(1, 5), **{"max_new_tokens": 2, **kw})


def test_past_max_position_embeddings_warns(model):
    limit = model.config.max_position_embeddings
    with pytest.warns(UserWarning, match="max_position_embeddings"):
        generate_ids(model, random_ids(1, limit - 1), max_new_tokens=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate_ids(model, random_ids(1, 8), max_new_tokens=2)


def test_a_press_by_name_needs_keep():
    """make_press("snapkv") used to build a press that keeps every entry: a silent no-op."""
    with pytest.raises(ValueError, match="snapkv: give keep"):
        make_press("snapkv")
    with pytest.raises(ValueError, match="adakv: give keep"):
        make_press("adakv", kernel=11)
    assert make_press("zipcache").keep == 1.0  # quantizing alone saves memory
    assert make_press("decoding", target=64).keep == 1.0  # the decode-time budget is target
    assert make_press("snapkv", keep=1.0).keep == 1.0  # asked for explicitly: fine
