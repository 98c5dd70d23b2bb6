"""Two-hop chains, answer-type cues, within-document decay, titles and sentence splitting of the extractive
prompt compressor, each against a straightforward reference."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tokenreduce.prompt.chains import chain_scores, question_coverage, within_doc_rank
from tokenreduce.prompt.lexical import terms
from tokenreduce.prompt.linking import heading_sentences, link_matrix, named_in
from tokenreduce.prompt.qtype import answer_type, answer_type_scores
from tokenreduce.prompt.segment import ends_sentence, segment

DOCS = [
    "Title: Night Harbour\nNight Harbour is a 1999 drama film directed by Ewan Calder. It was shot in Leith.",
    "Title: Ewan Calder (director)\nEwan Calder is a film maker. He was born in Bergen, Norway, in 1950.",
    "Title: Grey Lantern\nGrey Lantern is a 2003 comedy film about a lighthouse keeper.",
    "Title: Leith\nLeith is a port district to the north of the centre of Edinburgh.",
]


def _sents(docs):
    seg = segment("\n\n".join(docs), [])
    first = np.r_[0, np.flatnonzero(seg.sent[1:] != seg.sent[:-1]) + 1]
    return seg.sentence_texts(), seg.doc[first]


def test_question_coverage_matches_set_reference():
    q = "Which drama film directed by Ewan Calder was shot in a port district?"
    texts = [" ".join(_sents([d])[0]) for d in DOCS]
    got = question_coverage(q, texts)
    qt = set(terms(q))
    sets = [set(terms(t)) & qt for t in texts]
    idf = {t: math.log(1 + len(texts) / (1 + sum(t in s for s in sets))) for t in qt}
    for p, d in itertools.product(range(len(texts)), repeat=2):
        want = sum(idf[t] for t in sets[p] | sets[d]) / sum(idf.values())
        assert got[p, d] == pytest.approx(want)
    assert question_coverage("the of and", texts).sum() == 0  # no content terms: no coverage
    assert got[0, 3] > max(got[0, 0], got[3, 3])  # the pair covers more than either alone


@settings(max_examples=60, deadline=None)
@given(st.integers(2, 6).flatmap(lambda n: st.tuples(st.just(n), st.integers(0, 2**31 - 1))))
def test_chain_scores_match_pair_loop(args):
    n, seed = args
    rng = np.random.default_rng(seed)
    rel, named = rng.normal(size=n), rng.random(n) < 0.3
    links, cover = rng.random((n, n)) < 0.3, rng.random((n, n))
    cover = (cover + cover.T) / 2
    got = chain_scores(rel, links, named, cover, 1.0, 0.6, 3.0)
    for d in range(n):
        want = max(
            rel[p] + 0.6 * named[p] + rel[d] + 0.6 * named[d] + 1.0 * (links[p, d] or links[d, p]) + 3.0 * cover[p, d]
            for p in range(n)
            if p != d
        )
        assert got[d] == pytest.approx(want)
    assert chain_scores(np.array([0.4]), np.zeros((1, 1), bool), np.array([True]), np.zeros((1, 1)), 1, 0.6, 3)[
        0
    ] == pytest.approx(1.0)


def test_chain_lifts_the_linked_bridge_document():
    rel = np.array([1.0, 0.2, 0.5, 0.45])  # 0 answers the first hop; 1 is the bridge, named only by 0
    links = np.zeros((4, 4), bool)
    links[0, 1] = True
    zero = np.zeros((4, 4))
    plain = chain_scores(rel, np.zeros((4, 4), bool), np.zeros(4, bool), zero, 1.0, 0.6, 0.0)
    chained = chain_scores(rel, links, np.zeros(4, bool), zero, 1.0, 0.6, 0.0)
    assert np.argsort(-plain)[1] != 1 and np.argsort(-chained)[1] == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.floats(-5, 5), st.booleans()), min_size=1, max_size=25))
def test_within_doc_rank_matches_loop(rows):
    docs = np.array(sorted(r[0] for r in rows))
    scores = np.array([r[1] for r in rows])
    ok = np.array([r[2] for r in rows])
    got = within_doc_rank(scores, docs, ok)
    for i in range(len(rows)):
        if not ok[i]:
            assert got[i] == 0
            continue
        same = [j for j in range(len(rows)) if ok[j] and docs[j] == docs[i]]
        assert got[i] == sum(scores[j] > scores[i] or (scores[j] == scores[i] and j < i) for j in same)


def test_links_and_names():
    sents, doc_of = _sents(DOCS)
    links = link_matrix(sents, doc_of)
    assert links[0, 1] and links[0, 3] and links.sum() == 2  # Night Harbour names Ewan Calder and Leith
    assert list(named_in("Who directed Night Harbour?", [[" night harbour "], [], [" leith "]])) == [True, False, False]
    assert list(heading_sentences(sents, doc_of)) == [0, 3, 6, 8]


def test_answer_type():
    assert answer_type("When was the tower built?") == "date"
    assert answer_type("In what year was she born?") == "date"
    assert answer_type("How many people live there?") == "number"
    assert answer_type("Who directed it?") is None and answer_type(None) is None
    sents = ["It opened in 1999.", "It opened in May.", "It has 3 floors.", "Built in 1900 by Ann."]
    np.testing.assert_array_equal(answer_type_scores("When after 1900 did it open?", sents), [1, 1, 0, 0])
    np.testing.assert_array_equal(answer_type_scores("How many floors after 1999?", sents), [0, 0, 1, 1])
    np.testing.assert_array_equal(answer_type_scores("Who built it?", sents), [0, 0, 0, 0])


def test_initials_and_abbreviations_do_not_end_sentences():
    for w in ("J.", "U.S.", "M.Sc.", "Ph.D.", "Dr.", "vs.", "e.g.", "(M."):
        assert not ends_sentence(w), w
    for w in ("end.", "1998.", "it.)", '"Alien."', "Now!", "why?"):
        assert ends_sentence(w), w
    text = "It is the third volume of J. R. R. Tolkien's novel. Ali vs. Ellis was held in 1971. Done."
    assert segment(text, []).sentence_texts() == [
        "It is the third volume of J. R. R. Tolkien's novel.",
        "Ali vs. Ellis was held in 1971.",
        "Done.",
    ]


@pytest.fixture(scope="module")
def extractive():
    from tokenreduce.prompt import PromptCompressor

    return PromptCompressor("extractive")


UNRELATED_TITLES = [
    "Title: Appendix C\nEwan Calder was born in Bergen, Norway, in 1950. He studied painting in Oslo.",
    "Title: Misc notes\nThe harbour of Leith is busy. Ferries leave every hour for the islands.",
    "Title: Other\nGrey Lantern is a comedy film about a lighthouse keeper and his dog.",
]


def _titles_missing(comp) -> int:
    """How often a document keeps something of its body but not its whole title line (rates 0.7, 0.5, 0.3)."""
    starts = np.cumsum([0] + [len(d) + 2 for d in UNRELATED_TITLES[:-1]])
    missing = 0
    for rate in (0.7, 0.5, 0.3):
        kept = comp(UNRELATED_TITLES, "Where was Ewan Calder born?", rate=rate).char_mask()
        for s, d in zip(starts, UNRELATED_TITLES):
            t = len(d.split("\n", 1)[0])
            # something of the body survives, but not the whole title line
            missing += bool(kept[s + t + 1 : s + len(d)].any() and not kept[s : s + t].all())
    return missing


@pytest.mark.parametrize("keep_titles", [True, False])
def test_kept_documents_keep_their_titles(extractive, keep_titles):
    """At token granularity (the old default, where the contrast shows: without the rule a title line is cut
    or dropped); with whole sentences the rule binds each title to its document's kept sentences."""
    from tokenreduce.prompt import PromptCompressor

    comp = PromptCompressor("extractive", tokenizer=extractive.counter, keep_titles=keep_titles, granularity="token")
    comp.scorer.encoder = extractive.scorer.encoder
    assert (_titles_missing(comp) == 0) == keep_titles  # titles that say nothing of the question survive by the rule
    if keep_titles:
        assert _titles_missing(extractive) == 0


def test_decay_keeps_order_within_a_single_document(extractive):
    from tokenreduce.prompt import PromptCompressor

    off = PromptCompressor("extractive", tokenizer=extractive.counter, doc_decay=0.0)
    text = " ".join(DOCS[i].split("\n", 1)[1] for i in range(4))  # one document, no title
    q = "Where was Ewan Calder born?"
    for rate in (0.6, 0.3):
        assert extractive(text, q, rate=rate).text == off(text, q, rate=rate).text


def test_bridge_lifts_the_document_named_by_the_best_sentence():
    from tokenreduce.prompt.methods.extractive import _bridge

    sents, doc_of = _sents(DOCS)
    heads = heading_sentences(sents, doc_of)
    body = np.ones(len(sents), dtype=bool)
    body[heads[heads >= 0]] = False
    score = np.zeros(len(sents))
    score[1] = 2.0  # "Night Harbour is a 1999 drama film directed by Ewan Calder." names doc 1's title
    got = _bridge(score, sents, doc_of, body, k=1)
    d1 = np.flatnonzero((doc_of == 1) & body)
    assert got[d1[0]] == 1.0 and got[d1[1]] == 0.5  # the bridge's lead sentence first, then the next
    assert got[~np.isin(np.arange(len(sents)), d1)].sum() == 0  # nothing else: no self-link, no titles
    score[:] = 0
    score[7] = 2.0  # Grey Lantern's sentence names no other title
    assert _bridge(score, sents, doc_of, body, k=1).sum() == 0



def test_bridge_by_score_lifts_the_bridge_documents_most_relevant_sentence_first():
    from tokenreduce.prompt.methods.extractive import Extractive, _bridge

    docs = ["Title: Operation Cold Comfort\nOperation Cold Comfort was a failed raid by the Special Air Service.",
            "Title: Special Air Service\nThe Special Air Service is a regiment. It has a crest. It was formed in 1941."]
    sents, doc_of = _sents(docs)
    heads = heading_sentences(sents, doc_of)
    body = np.ones(len(sents), dtype=bool)
    body[heads[heads >= 0]] = False
    score = np.array([0.0, 3.0, 0.0, 1.0, 0.5, 2.0])  # the raid names doc 1; its founding sentence is its best
    bridge = np.flatnonzero(doc_of == 1)[1:]  # body sentences of the bridge document, in order
    np.testing.assert_allclose(_bridge(score, sents, doc_of, body, k=1, by_score=True)[bridge], [1 / 2, 1 / 3, 1.0])
    np.testing.assert_allclose(_bridge(score, sents, doc_of, body, k=1)[bridge], [1.0, 1 / 2, 1 / 3])  # lead first
    assert Extractive().bridge_by_score and Extractive().w_bridge == 2.0


def test_verbatim_repeats_rank_last_after_their_first_copy():
    from tokenreduce.prompt.methods.extractive import _repeats_last

    sents = ["Title: A", "Phelps won 28 medals.", "Norway topped the table.", "phelps  won 28 medals.", "Title: B"]
    body = np.array([False, True, True, True, False])
    score = np.array([5.0, 4.0, 3.0, 4.5, 5.0])
    got = _repeats_last(score, sents, body)
    order = list(np.argsort(-got, kind="stable"))
    assert order[-1] == 1  # the lower-scored copy goes last; the better copy (3) keeps its place
    assert order[:4] == [0, 4, 3, 2] and got[3] == 4.5
    np.testing.assert_array_equal(_repeats_last(score[:3], sents[:3], body[:3]), score[:3])  # nothing repeated


def test_acronyms_link_a_sentence_to_the_titled_document():
    from tokenreduce.prompt.linking import acronym, acronyms_in
    from tokenreduce.prompt.methods.extractive import _bridge

    assert acronym("Title: Special Air Service") == "sas" and acronym("Title: Leith") is None
    assert acronym("Gesellschaft mit beschränkter Haftung (company)") == "gmbh"
    assert acronyms_in("A failed SAS raid by VIVA Media GmbH, not a Sas or an A.") == {"sas", "viva", "gmbh"}
    docs = ["Title: Operation Cold Comfort\nOperation Cold Comfort was a failed SAS raid. It began in 1945.",
            "Title: Special Air Service\nThe SAS was founded in 1941. It is a regiment.",
            "Title: Sas Island\nSas Island lies in the north. Its harbour is small."]
    sents, doc_of = _sents(docs)
    heads = heading_sentences(sents, doc_of)
    body = np.ones(len(sents), dtype=bool)
    body[heads[heads >= 0]] = False
    score = np.where(np.arange(len(sents)) == 1, 2.0, 0.0)  # the raid sentence is the best
    got = _bridge(score, sents, doc_of, body, k=1)
    assert got[doc_of == 1].max() == 1.0  # "SAS" names Special Air Service
    assert got[doc_of == 2].sum() == 0  # "Sas" (one capital) is no acronym, and "Sas Island" is not named


def _coverage_reference(scores, sents, eligible, question, weight, prefix):
    """Straightforward greedy: pick the eligible sentence with the best score + weight x its share of the
    uncovered question IDF (terms cut to ``prefix`` characters), until every pick has been made."""
    cut = (lambda t: t[:prefix]) if prefix else (lambda t: t)
    q = {cut(t) for t in terms(question)}
    has = [{cut(t) for t in terms(s)} & q for s in sents]
    n = len(sents)
    idf = {t: math.log(1 + (n - sum(t in h for h in has) + 0.5) / (sum(t in h for h in has) + 0.5))
           for t in q if any(t in h for h in has)}
    if not idf:
        return np.array(scores, dtype=float)
    covered, left, picks = set(), [i for i in range(n) if eligible[i]], []
    while left:
        gain = [sum(idf[t] for t in has[i] - covered) / sum(idf.values()) for i in left]
        best = max(range(len(left)), key=lambda k: (scores[left[k]] + weight * gain[k], -left[k]))
        picks.append(left.pop(best))
        covered |= has[picks[-1]]
    out = np.array(scores, dtype=float)
    out[picks] = sorted((scores[i] for i in picks), reverse=True)
    return out


def test_coverage_moves_up_the_sentence_with_an_uncovered_question_term():
    from tokenreduce.prompt.lexical import coverage_order

    q = "The raid was by a special forces unit founded in what year?"
    sents = ["Title: Special Air Service", "The Special Air Service is a special forces unit.",
             "The special forces unit is part of the army.", "The unit was founded in 1941.", "Title: Other"]
    body = np.array([False, True, True, True, False])
    score = np.array([9.0, 4.0, 3.9, 3.5, 9.0])
    got = coverage_order(score, sents, body, q, weight=1.0)
    assert list(np.argsort(-got[body], kind="stable")) == [0, 2, 1]  # "founded" is new; the second mention is not
    assert sorted(got[body]) == sorted(score[body]) and (got[~body] == score[~body]).all()  # same values, headings kept
    np.testing.assert_array_equal(coverage_order(score, sents, body, q, weight=0.0), score)  # off: unchanged
    np.testing.assert_array_equal(coverage_order(score, sents, body, "what?", weight=1.0), score)  # no terms
    # truncation stemming: "acquiring" covers "acquired" with 5-character prefixes, not with whole words
    s2 = ["Rex founded the company.", "Rex is a businessman from Utah.", "After acquiring Aloe Vera, it grew."]
    b2 = np.ones(3, dtype=bool)
    sc2 = np.array([4.0, 3.9, 3.5])
    q2 = "What company did Rex acquired?"
    assert np.argsort(-coverage_order(sc2, s2, b2, q2, 1.0, prefix=5), kind="stable")[1] == 2
    assert np.argsort(-coverage_order(sc2, s2, b2, q2, 1.0, prefix=0), kind="stable")[1] == 1


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["alpha beta", "gamma", "beta delta gamma", "epsilon", "alpha", "zeta beta"]),
                min_size=1, max_size=8),
       st.lists(st.floats(-3, 3, allow_nan=False), min_size=8, max_size=8),
       st.sampled_from([0.5, 1.0, 3.0]), st.sampled_from([0, 3]))
def test_coverage_order_matches_the_greedy_reference(words, raw, weight, prefix):
    from tokenreduce.prompt.lexical import coverage_order

    sents = [f"{w}." for w in words]
    scores = np.round(np.array(raw[: len(sents)]), 1)
    body = np.array([i % 4 != 3 for i in range(len(sents))])
    q = "alpha gamma zeta omega?"
    got = coverage_order(scores, sents, body, q, weight, prefix)
    if body.sum() < 2:
        np.testing.assert_array_equal(got, scores)
    else:
        ref = _coverage_reference(scores, sents, body, q, weight, prefix)
        assert list(np.argsort(-got, kind="stable")) == list(np.argsort(-ref, kind="stable"))


def test_heading_lines_are_not_speaker_labels(extractive):
    """A "Title: X" line is a document's heading, not a speaker's turn: only ``keep_titles`` keeps it with the
    document's kept sentences (the speaker rule used to bind it to every piece of its document)."""
    from tokenreduce.prompt import PromptCompressor
    from tokenreduce.prompt.protect import speaker_spans

    assert speaker_spans("Title: Leith\nLeith is a port.\nheading: x\nHeading:  Y\n") == []
    assert speaker_spans("Alice: hi\nTitle Card: no\nProfessor E: yes\n") == [(0, 6), (10, 21), (25, 37)]
    assert extractive.prepare(UNRELATED_TITLES, "Where was Ewan Calder born?").requires is None
    # a method without a title rule (random order): some kept body sentence goes without its heading line
    rnd = PromptCompressor("random", tokenizer=extractive.counter, seed=1)
    starts = np.cumsum([0] + [len(d) + 2 for d in UNRELATED_TITLES[:-1]])
    alone = 0
    for rate in (0.7, 0.5, 0.3):
        kept = rnd(UNRELATED_TITLES, rate=rate).char_mask()
        for s, d in zip(starts, UNRELATED_TITLES):
            t = len(d.split("\n", 1)[0])
            alone += bool(kept[s + t + 1 : s + len(d)].any() and not kept[s : s + t].any())
    assert alone > 0
    q = "Where was Ewan Calder born?"
    for rate in (0.5, 0.3):  # with the title rule the heading comes with its document's kept sentences
        assert "Title: Appendix C\nEwan Calder was born" in extractive(UNRELATED_TITLES, q, rate=rate).text


LONG_TITLE = "Large denominations of United States currency and notes"  # "Title: " + it is >= 50 characters


@pytest.mark.parametrize("head", [f"Title: {LONG_TITLE}", f"## {LONG_TITLE}", "Title: What's Up? (song)",
                                  f"Title: {LONG_TITLE} of the kind issued by the Treasury before the war (1861)"])
def test_a_heading_line_is_its_own_sentence_whatever_its_length(head):
    """A labelled heading line ends its sentence even when it is long enough to read as hard-wrapped prose,
    nothing inside it ends one, and it is its document's heading (at any length)."""
    doc = f"{head}\nThe largest note ever printed was the $100,000 bill. It was never in general circulation."
    sents, doc_of = _sents([doc, "Title: Other\nAnother document. Its second sentence."])
    assert sents[:3] == [head, "The largest note ever printed was the $100,000 bill.",
                         "It was never in general circulation."]
    assert list(heading_sentences(sents, doc_of)) == [0, 3]
    # a long unlabelled line is still hard-wrapped prose: it runs on into the next line
    wrapped = "The largest note ever printed was the one hundred thousand\ndollar bill, never in circulation."
    assert _sents([wrapped])[0] == [wrapped]
