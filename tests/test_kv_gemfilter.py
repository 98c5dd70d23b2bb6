"""GemFilter token selection against eager attention, early exit, and keep=1 exactness."""

from __future__ import annotations

import pytest
import torch
from kv_models import random_ids, tiny_lm

from tokenreduce.kv import generate_ids
from tokenreduce.kv.gemfilter import gemfilter_ids, gemfilter_select
from tokenreduce.kv.hooks import attention_modules


def test_selection_matches_eager_attention_and_stops_early():
    sdpa, eager = tiny_lm("qwen2"), tiny_lm("qwen2", impl="eager")
    ids = random_ids(1, 50, seed=4)
    with torch.no_grad():
        att = eager(input_ids=ids, output_attentions=True).attentions[1]
    ref = att[0, :, -1].sum(0).sort(descending=True, stable=True).indices[:20].sort().values
    calls = []
    hs = [m.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, m in enumerate(attention_modules(sdpa))]
    try:
        got = gemfilter_select(sdpa, ids, keep=0.4, layer=1)
    finally:
        for h in hs:
            h.remove()
    assert torch.equal(got, ref)
    assert calls == [0, 1]  # layers after the filter layer never ran


def test_keep_one_is_the_full_prompt():
    m = tiny_lm("llama")
    ids = random_ids(1, 30)
    assert torch.equal(gemfilter_ids(m, ids, 1.0), ids)
    full = generate_ids(m, ids, max_new_tokens=3)
    assert torch.equal(generate_ids(m, gemfilter_ids(m, ids, 1.0), max_new_tokens=3), full)


def test_bad_input():
    m = tiny_lm("llama")
    with pytest.raises(ValueError, match="one sequence"):
        gemfilter_select(m, random_ids(2, 10), 0.5)
    with pytest.raises(ValueError, match="keep"):
        gemfilter_select(m, random_ids(1, 10), 0.0)
    with pytest.raises(ValueError, match="layer"):
        gemfilter_select(m, random_ids(1, 10), 0.5, layer=9)
