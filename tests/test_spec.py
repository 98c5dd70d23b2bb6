"""The one spec grammar ``name:key=value,key=value`` shared by every family's CLI and YAML."""

from __future__ import annotations

import pytest

from tokenreduce.spec import parse_spec


def test_values_are_typed():
    assert parse_spec("tome:keep=0.4,schedule=decreasing,min_tokens=16,prop_attn=false,seed=none") == (
        "tome", {"keep": 0.4, "schedule": "decreasing", "min_tokens": 16, "prop_attn": False, "seed": None})


def test_lists_use_semicolons():
    assert parse_spec("tome:keep=0.25,layers=0;1;2;3;4") == ("tome", {"keep": 0.25, "layers": [0, 1, 2, 3, 4]})


def test_colon_pairs_read_the_same():
    assert parse_spec("snapkv:kernel=11:window=32") == parse_spec("snapkv:kernel=11,window=32")
    assert parse_spec(" evit ") == ("evit", {})


@pytest.mark.parametrize(("text", "message"), [
    ("", "a name first"), (":keep=0.5", "a name first"), ("tome:keep", "got 'keep'"),
    ("tome:=3", "got '=3'"), ("tome:r=2,r=3", "given twice"),
])
def test_bad_specs_are_named(text, message):
    with pytest.raises(ValueError, match=message):
        parse_spec(text)
