"""A row's generation does not depend on its batch: every press, contexts and questions of different
lengths left-padded in one batch, compared token for token (and logits within 1e-5) with each row alone.

The question block of a batch is left-padded too, so the padding sits *after* the compressed prefix:
the regression here is that ragged (per-head) storage treated those pad entries as real in later
decode steps (AdaKV, PyramidKV, KVzip answered differently in a batch than alone).
"""

from __future__ import annotations

import pytest
import torch
from kv_models import random_ids, tiny_lm

from tokenreduce.kv import generate_ids, make_press, presses

SPECS = {
    "random": {},
    "streaming_llm": {"sinks": 2, "recent": 4},
    "key_norm": {},
    "snapkv": {"window": 4},
    "tova": {},
    "h2o": {},
    "keyformer": {"window": 4},
    "adakv": {"window": 4},
    "pyramidkv": {"window": 4},
    "kvzip": {},
    "zipcache": {"bits": 4, "group": 8},
    "decoding": {"target": 12, "interval": 2},
    "keydiff": {},
    "expected_attention": {},
    "chunkkv": {"chunk": 4},
    "think": {"channel_keep": 0.5, "window": 4},
    "qfilters": {},
    "rkv": {"target": 12, "interval": 2, "window": 4},
    "duo_attention": {"stream_sinks": 2, "stream_recent": 4, "window": 4},
    "merge": {"window": 4},
}
LENGTHS = [(40, 3), (31, 16), (23, 9)]  # (context, question) per row: all different


def _batch():
    ctx = random_ids(len(LENGTHS), max(c for c, _ in LENGTHS), seed=3)
    qs = random_ids(len(LENGTHS), max(q for _, q in LENGTHS), seed=4)
    cm, qm = torch.zeros_like(ctx), torch.zeros_like(qs)
    for b, (c, q) in enumerate(LENGTHS):
        cm[b, -c:], qm[b, -q:] = 1, 1
    return ctx * cm, cm, qs * qm, qm


@pytest.fixture(scope="module")
def model():
    return tiny_lm("llama")


def test_every_press_is_covered():
    assert set(SPECS) == set(presses())


@pytest.mark.parametrize("aware", [False, True], ids=["question-after", "query-aware"])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_row_alone_equals_row_in_batch(model, name, aware):
    press = make_press(name, keep=0.4, **SPECS[name])
    if aware and name == "kvzip":
        pytest.skip("kvzip scores the context alone (the question is never in its prefill)")
    ctx, cm, qs, qm = _batch()
    ids, logits = generate_ids(model, ctx, cm, qs, press, question_mask=qm, query_aware=aware, max_new_tokens=6,
                               output_logits=True)
    for b, (c, q) in enumerate(LENGTHS):
        one, one_logits = generate_ids(model, ctx[b : b + 1, -c:], None, qs[b : b + 1, -q:], press,
                                       query_aware=aware, max_new_tokens=6, output_logits=True)
        assert torch.equal(ids[b : b + 1], one), (name, b)
        torch.testing.assert_close(logits[b : b + 1], one_logits, atol=1e-5, rtol=0, msg=f"{name} row {b}")


def test_output_logits_are_the_greedy_choice(model):
    ctx, cm, qs, qm = _batch()
    ids, logits = generate_ids(model, ctx, cm, qs, make_press("adakv", keep=0.5), question_mask=qm,
                               max_new_tokens=4, output_logits=True)
    assert logits.shape[:2] == ids.shape
    assert torch.equal(logits.argmax(-1), ids)
