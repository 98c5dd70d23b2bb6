"""Shared by the tests of the newer presses: per-layer views of a (padded) prefill, and kvpress when present.

kvpress (the reference implementation) pins transformers < 5.3, so it is not a dependency: install it
beside ours with ``pip install --no-deps --target /tmp/kvpress kvpress==0.5.5 "cachetools<6"`` and run
the tests with ``PYTHONPATH=/tmp/kvpress``; without it the kvpress comparisons skip and the independent
reference implementations in each test still run.
"""

from __future__ import annotations

import sys
import types

import pytest
import torch
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from tokenreduce.kv import cache as kvc
from tokenreduce.kv.hooks import attention_modules
from tokenreduce.kv.presses import LayerView


@torch.no_grad()
def layer_views(model, ids: torch.Tensor, mask: torch.Tensor | None = None) -> list[LayerView]:
    """One :class:`LayerView` per attention layer of a prefill of ``ids`` (B, N) (left padding in ``mask``),
    positions counted over real tokens as :class:`tokenreduce.kv.session.Session` does."""
    mask = torch.ones_like(ids) if mask is None else mask
    inputs: dict[int, tuple] = {}

    def hook(mod, args, kwargs, out):
        inputs[mod.layer_idx] = (mod, kwargs["hidden_states"], *kwargs["position_embeddings"])

    mods = attention_modules(model)
    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in mods]
    cache = kvc.new_cache(model)
    try:
        model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), cache=cache,
              use_cache=True)
    finally:
        for h in handles:
            h.remove()
    out = []
    for m in mods:
        mod, hidden, cos, sin = inputs[m.layer_idx]
        keys, values = kvc.layer_kv(cache, m.layer_idx)
        out.append(LayerView(mod, m.layer_idx, len(mods), hidden, cos, sin, keys, values, mask.bool()))
    return out


def kvpress_or_skip():
    """The kvpress package (its optional imports stubbed, its patch of transformers' attention functions
    undone), or skip the test."""
    stubbed = []
    for name, attr in (("datasets", "load_dataset"), ("fire", "Fire")):
        try:
            __import__(name)
        except ImportError:
            stub = types.ModuleType(name)
            setattr(stub, attr, None)
            sys.modules[name] = stub
            stubbed.append(name)
    saved = dict(ALL_ATTENTION_FUNCTIONS.items())  # kvpress wraps every attention function on import
    try:
        import kvpress
    except ImportError:
        pytest.skip("kvpress not installed (PYTHONPATH=/tmp/kvpress, see tests/kv_press_refs.py)")
    finally:
        for name in stubbed:
            sys.modules.pop(name, None)
        for name, fn in saved.items():  # undone, so the tests after this one run transformers' own
            ALL_ATTENTION_FUNCTIONS[name] = fn
    return kvpress
