"""The invariants and a quality sanity check on the real all-MiniLM-L6-v2 weights."""

from __future__ import annotations

import pytest
import torch

import tokenreduce as tr
from tokenreduce.bench.encoder import load_text_encoder
from tokenreduce.encoder.methods.base import REGISTRY

SENTENCES = [
    "The first Nobel Prize in Physics was awarded in 1901 to Wilhelm Conrad Röntgen for his discovery of X-rays.",
    "A girl is styling her hair.",
    "Token merging combines similar tokens so that a transformer processes fewer of them, which saves time.",
    "Paris is the capital and most populous city of France, with an estimated population of two million.",
]


@pytest.fixture(scope="module")
def enc():
    return load_text_encoder()


def test_identity_and_unpatch_exact_on_real_weights(enc):
    batch = enc.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    ref = enc.embed_batch(batch)
    with tr.patched(enc.model, "tome", keep=1.0):
        assert torch.equal(enc.embed_batch(batch), ref)
    with tr.patched(enc.model, "tome", keep=0.5):
        assert not torch.equal(enc.embed_batch(batch), ref)
    assert torch.equal(enc.embed_batch(batch), ref)


@pytest.mark.parametrize("method", ["tome", "evit", "topk-norm", "random"])
def test_batch_independence_on_real_text(enc, method):
    batch = enc.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with tr.patched(enc.model, method, keep=0.5):
        together = enc.embed_batch(batch)
        for i, s in enumerate(SENTENCES):
            alone = enc.embed_batch(enc.tokenizer([s], return_tensors="pt"))
            torch.testing.assert_close(together[i], alone[0], atol=1e-5, rtol=1e-4)


def test_mild_reduction_keeps_embeddings_close(enc):
    """Sanity, not a benchmark: at keep 0.9 every method's sentence embeddings stay close to the
    unreduced ones, and merging/fusing stays closer than random pruning at keep 0.3."""
    batch = enc.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    ref = enc.embed_batch(batch)
    cos = {}
    # pool needs an image grid; ATS keeps *at most* the schedule's tokens (adaptive: on these
    # peaked attention maps far fewer), so "keep=0.9" does not bound its reduction
    text_methods = [m for m in tr.methods() if not getattr(REGISTRY.get(m), "requires_grid", False) and m != "ats"]
    for method in text_methods:
        for keep in (0.9, 0.3):
            with tr.patched(enc.model, method, keep=keep):
                cos[method, keep] = (enc.embed_batch(batch) * ref).sum(-1).min().item()
    assert all(cos[m, 0.9] > 0.9 for m in text_methods), cos
    assert cos["tome", 0.3] > cos["random", 0.3] and cos["evit", 0.3] > cos["random", 0.3], cos
