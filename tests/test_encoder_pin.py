"""Cross-encoder rerankers: ``pin="first_segment"`` keeps each row's query whole and reduces its passage.

Tiny BERT and XLM-R sequence-classification heads (token_type_ids, and the separator for XLM-R), the
invariants: reducing nothing is exact, the query is never merged or dropped, a row's score does not
depend on its batch (queries and passages of different lengths), the budget counts passage tokens only,
the analytic MACs of the padded pinned layout equal FlopCounterMode, refusals before anything changes,
and a sentence-transformers CrossEncoder's ``predict``.
"""

from __future__ import annotations

import pytest
import torch
from models import HID, jitter_norms
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
)

import tokenreduce as tr
from tokenreduce.bench.flops import measured_flops
from tokenreduce.encoder.adapters.patching import first_segment, resolve_family
from tokenreduce.encoder.adapters.runner import record_sources
from tokenreduce.encoder.cost import encoder_cost, layer_widths, total_macs

SEP = {"bert": 3, "xlmr": 2}


def reranker(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        cfg = BertConfig(vocab_size=120, num_labels=1, attn_implementation="sdpa", **HID)
        return jitter_norms(BertForSequenceClassification(cfg))
    cfg = XLMRobertaConfig(vocab_size=120, num_labels=1, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                           attn_implementation="sdpa", **HID)
    return jitter_norms(XLMRobertaForSequenceClassification(cfg))


def pairs(kind: str, shapes=((4, 20), (7, 12), (2, 25))) -> dict[str, torch.Tensor]:
    """``[CLS] q [SEP] p [SEP]`` (BERT, with token_type_ids) or ``<s> q </s></s> p </s>`` (XLM-R), right-padded."""
    g = torch.Generator().manual_seed(1)
    sep, cls, pad = (3, 2, 0) if kind == "bert" else (2, 0, 1)
    rows, types = [], []
    for q, p in shapes:
        qi, pi = torch.randint(5, 120, (q,), generator=g), torch.randint(5, 120, (p,), generator=g)
        if kind == "bert":
            ids = torch.cat([torch.tensor([cls]), qi, torch.tensor([sep]), pi, torch.tensor([sep])])
            types.append(torch.cat([torch.zeros(q + 2), torch.ones(p + 1)]).long())
        else:
            ids = torch.cat([torch.tensor([cls]), qi, torch.tensor([sep, sep]), pi, torch.tensor([sep])])
        rows.append(ids)
    n = max(len(r) for r in rows)
    ids = torch.full((len(rows), n), pad)
    mask = torch.zeros(len(rows), n, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1
    out = {"input_ids": ids, "attention_mask": mask}
    if kind == "bert":
        tt = torch.zeros(len(rows), n, dtype=torch.long)
        for i, t in enumerate(types):
            tt[i, : len(t)] = t
        out["token_type_ids"] = tt
    return out


def cut(x: dict, i: int) -> dict:
    n = int(x["attention_mask"][i].sum())
    return {k: v[i : i + 1, :n] for k, v in x.items()}


def logits(model, x) -> torch.Tensor:
    with torch.inference_mode():
        return model(**x).logits


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
def test_first_segment_mask(kind):
    x = pairs(kind)
    seg = first_segment(x["input_ids"], x.get("token_type_ids"), SEP[kind])
    # [CLS] + query + [SEP] (XLM-R: <s> + query + the first </s>)
    assert (seg & x["attention_mask"].bool()).sum(1).tolist() == [6, 9, 4]


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
@pytest.mark.parametrize("params", [{"keep": 1.0}, {"r": 0}])
def test_reducing_nothing_is_exact(kind, params):
    model, x = reranker(kind), pairs(kind)
    ref = logits(model, x)
    with tr.patched(model, "tome", pin="first_segment", **params):
        assert torch.equal(logits(model, x), ref)


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
@pytest.mark.parametrize("method", ["tome", "evit", "random"])
def test_query_is_never_reduced_and_only_passages_shrink(kind, method):
    model, x = reranker(kind), pairs(kind)
    seg = first_segment(x["input_ids"], x.get("token_type_ids"), SEP[kind]) & x["attention_mask"].bool()
    passage = (x["attention_mask"].bool() & ~seg).sum(1)
    with tr.patched(model, method, keep=0.3, pin="first_segment"), record_sources() as recs:
        out = logits(model, x)
    assert torch.isfinite(out).all() and recs
    for rec in recs:
        for b in range(3):
            slots = rec.src[b][seg[b]]
            assert (slots >= 0).all() and len(set(slots.tolist())) == len(slots)  # own slot each, never dropped
            assert (rec.sizes[b][slots] == 1).all()  # and nothing merged into it
    last = recs[-1]
    kept = [(last.sizes[b] > 0).sum() - seg[b].sum() for b in range(3)]
    assert all(k < n for k, n in zip(kept, passage))  # every passage was reduced


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
@pytest.mark.parametrize("method", ["tome", "evit"])
def test_a_rows_score_does_not_depend_on_its_batch(kind, method):
    """Same scores, and at every reducing layer the same groups of original tokens (a tiny random model's
    scores barely move when a later layer merges differently, so the groups are what is checked exactly)."""
    model, x = reranker(kind), pairs(kind)
    with tr.patched(model, method, keep=0.4, pin="first_segment"):
        with record_sources() as recs:
            together = logits(model, x)
        for i in range(3):
            with record_sources() as alone_recs:
                alone = logits(model, cut(x, i))
            torch.testing.assert_close(together[i : i + 1], alone, atol=2e-5, rtol=1e-4)
            n = int(x["attention_mask"][i].sum())
            assert len(recs) == len(alone_recs) > 1
            for rec, one in zip(recs, alone_recs):
                assert groups(rec.src[i, :n]) == groups(one.src[0, :n])


def groups(src: torch.Tensor) -> list[tuple[int, ...]]:
    """The partition a source map makes of a row's tokens (slot numbers aside): each kept group, and the dropped."""
    out: dict[int, list[int]] = {}
    for token, slot in enumerate(src.tolist()):
        out.setdefault(slot, []).append(token)
    return sorted(tuple(v) for k, v in out.items() if k >= 0) + [tuple(out.get(-1, []))]


@pytest.mark.parametrize("kind", ["bert", "xlmr"])
@pytest.mark.parametrize(
    "method,params", [("tome", {"keep": 0.3}), ("tome", {"r": 2}), ("evit", {"keep": 0.4}), ("tome", {"keep": 1.0})]
)
def test_analytic_macs_of_a_pinned_batch_match_flop_counter(kind, method, params):
    """Queries of 4, 7 and 2 tokens: the blocks run at the longest pinned prefix plus the longest passage
    (wider than the batch came) with that prefix protected; the analytic count follows it exactly. The
    pooler and classifier are the same with and without the patch, so the blocks' difference is compared."""
    model, x = reranker(kind), pairs(kind)
    fam, layers = resolve_family(model)
    dims, prot = fam.dims(model), fam.default_protected(model)
    lengths = x["attention_mask"].sum(1)
    pinned = (first_segment(x["input_ids"], x.get("token_type_ids"), SEP[kind]) & x["attention_mask"].bool()).sum(1)
    with torch.inference_mode():
        base = measured_flops(model, **x)
    m = tr.make_method(method, **params)
    with tr.patched(model, m, pin="first_segment"), record_sources() as recs, torch.inference_mode():
        measured = measured_flops(model, **x)
    analytic = total_macs(encoder_cost(dims, lengths, m, prot, pinned=pinned))
    assert measured - base == 2 * (analytic - total_macs(encoder_cost(dims, lengths)))
    widths = layer_widths(lengths, len(layers), m, prot, pinned=pinned)
    assert [rec.sizes.shape[1] for rec in recs] == [w for n, w in widths if w < n]
    if recs:  # the patch's fixed protected count undercounts: the pinned layout is wider
        assert widths[0][0] > int(lengths.max())
        assert analytic != total_macs(encoder_cost(dims, lengths, m, prot))


def test_pinning_changes_what_is_reduced():
    """Without the pin the query is merged like any token; with it, the scores differ."""
    model, x = reranker("bert"), pairs("bert")
    with tr.patched(model, "tome", keep=0.3):
        free = logits(model, x)
    with tr.patched(model, "tome", keep=0.3, pin="first_segment"):
        pinned = logits(model, x)
    assert not torch.allclose(free, pinned)


def test_refused_before_anything_changes():
    from models import mpnet
    from vision_models import beit

    bert = reranker("bert")
    with pytest.raises(ValueError, match="pin must be None or 'first_segment'"):
        tr.patch(bert, "tome", keep=0.5, pin="query")
    with pytest.raises(ValueError, match="needs absolute positions; hf-mpnet"):
        tr.patch(mpnet(), "tome", keep=0.5, pin="first_segment")
    with pytest.raises(ValueError, match="hf-beit is not supported"):
        tr.patch(beit(), "tome", keep=0.5, pin="first_segment")
    assert tr.patch_info(bert) is None and not bert._forward_pre_hooks
    tr.patch(bert, "tome", keep=0.5, pin="first_segment")
    assert bert._forward_pre_hooks
    tr.unpatch(bert)
    assert not bert._forward_pre_hooks and not bert._forward_hooks


def test_sentence_transformers_cross_encoder(tmp_path):
    st = pytest.importorskip("sentence_transformers")
    from test_encoder_families_st import _tokenizer

    reranker("bert").save_pretrained(tmp_path)  # a user's local reranker folder: config, weights, tokenizer
    _tokenizer().save_pretrained(tmp_path)
    ce = st.CrossEncoder(str(tmp_path), device="cpu")
    pairs_ = [("w1 w2", "w3 w4 w5 w6 w7 w8 w9 w10 w11 w12"), ("w5", "w6 w7 w8 w9")]
    ref = torch.as_tensor(ce.predict(pairs_))
    with tr.patched(ce, "tome", keep=1.0, pin="first_segment"):
        assert torch.equal(torch.as_tensor(ce.predict(pairs_)), ref)
    with tr.patched(ce, "tome", keep=0.3, pin="first_segment"):
        out = torch.as_tensor(ce.predict(pairs_))
        alone = torch.as_tensor(ce.predict(pairs_[1:]))
    assert out.shape == ref.shape and torch.isfinite(out).all() and not torch.equal(out, ref)
    torch.testing.assert_close(out[1:], alone, atol=2e-5, rtol=1e-4)
