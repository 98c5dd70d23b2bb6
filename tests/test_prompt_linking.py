"""Document links (second hop) of the extractive prompt compressor."""

from __future__ import annotations

import numpy as np
import pytest

from tokenreduce.prompt.linking import doc_titles, link_scores, title_variants
from tokenreduce.prompt.segment import segment

DOCS = [
    "Title: Night Harbour\nNight Harbour is a 1999 drama film directed by Ewan Calder. It was shot in Leith.",
    "Title: Ewan Calder (director)\nEwan Calder is a film maker. He was born in Bergen, Norway, in 1950.",
    "Title: Grey Lantern\nGrey Lantern is a 2003 comedy film about a lighthouse keeper.",
    "Title: Leith\nLeith is a port district to the north of the centre of Edinburgh.",
]
QUESTION = "In which country was the director of Night Harbour born?"


def test_title_variants():
    assert title_variants("Title: Ewan Calder (director)") == [" ewan calder director ", " ewan calder "]
    assert title_variants("# Getting started") == [" getting started "]
    assert title_variants("Title: The") == []  # only a stopword
    assert title_variants("This first line is a long sentence rather than a heading, with far too many words.") == []


def _sents(docs):
    text = "\n\n".join(docs)
    seg = segment(text, [])
    first = np.r_[0, np.flatnonzero(seg.sent[1:] != seg.sent[:-1]) + 1]
    return seg.sentence_texts(), seg.doc[first]


def test_doc_titles_only_for_heading_lines():
    sents, doc_of = _sents(DOCS + ["A document without a heading line. It has two sentences."])
    titles = doc_titles(sents, doc_of)
    assert titles[0] == [" night harbour "] and titles[3] == [" leith "]
    assert titles[4] == []  # its first sentence is prose (ends in a full stop), not a heading
    assert len(titles) == 5


def test_link_scores_follow_titles_from_best_documents():
    sents, doc_of = _sents(DOCS)
    doc_score = np.array([0.9, 0.1, 0.5, 0.0])  # doc 0 best, doc 2 second
    got = link_scores(sents, doc_of, doc_score, "Who directed it?", k=2)
    # doc 0 (rank 1) names Ewan Calder (doc 1) and Leith (doc 3); nothing names doc 0 or doc 2
    np.testing.assert_allclose(got, [0.0, 1.0, 0.0, 1.0])
    got = link_scores(sents, doc_of, np.array([0.5, 0.1, 0.9, 0.0]), "Who directed it?", k=2)
    np.testing.assert_allclose(got, [0.0, 0.5, 0.0, 0.5])  # the linking document is now ranked second
    got = link_scores(sents, doc_of, np.array([0.5, 0.1, 0.9, 0.0]), "Who directed it?", k=1)
    np.testing.assert_allclose(got, [0.0, 0.0, 0.0, 0.0])  # only the best document links, and names nobody
    got = link_scores(sents, doc_of, doc_score, QUESTION, k=1)
    assert got[0] == 1.0  # named in the question
    assert link_scores(sents, doc_of, doc_score, QUESTION, k=1, from_question=False)[0] == 0.0


@pytest.fixture(scope="module")
def scorers():
    from tokenreduce.prompt import PromptCompressor
    from tokenreduce.prompt.bench_setup import tiktoken_dir

    only_links = {"w_chain": 0.0, "w_type": 0.0, "doc_decay": 0.0, "w_bridge": 0.0}  # isolate the link boost
    tok = "cl100k_base" if _has_cl100k() else None
    on = PromptCompressor("extractive", tokenizer=tok, tiktoken_dir=tiktoken_dir(None), **only_links)
    off = PromptCompressor("extractive", tokenizer=on.counter, w_link=0.0, **only_links)
    return on, off


def _has_cl100k() -> bool:
    from tokenreduce.prompt import TiktokenUnavailable, resolve_counter
    from tokenreduce.prompt.bench_setup import tiktoken_dir

    try:
        resolve_counter("cl100k_base", tiktoken_dir=tiktoken_dir(None))
    except (TiktokenUnavailable, ValueError, FileNotFoundError):
        return False
    return True


def test_link_boost_is_added_per_document(scorers):
    on, off = scorers
    assert on.scorer.cfg.w_link > 0
    seg = segment("\n\n".join(DOCS), [])
    a = on.scorer.sentence_scores(seg, QUESTION)
    b = off.scorer.sentence_scores(seg, QUESTION)
    sents, doc_of = _sents(DOCS)
    doc_best = np.full(len(DOCS), -np.inf)
    np.maximum.at(doc_best, doc_of, b)
    expected = on.scorer.cfg.w_link * link_scores(sents, doc_of, doc_best, QUESTION, on.scorer.cfg.link_k)[doc_of]
    np.testing.assert_allclose(a - b, expected, atol=1e-6)
    assert expected[doc_of == 1].min() > 0  # the bridge document (the director's) is boosted


def test_bridge_document_kept(scorers):
    on, _ = scorers
    r = on(DOCS, QUESTION, rate=0.5)
    assert "Norway" in r.text and "Night Harbour is" in r.text
    assert on(DOCS, QUESTION, rate=1.0).text == "\n\n".join(DOCS)
