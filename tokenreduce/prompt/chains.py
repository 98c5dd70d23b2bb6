"""Two-hop reasoning chains over documents: score each document by the best *pair* it belongs to.

A multi-hop question is answered by a chain of documents: one found from the question, the next found
through it (a bridge entity) or through the part of the question the first one leaves uncovered. A
document's chain score is the best score of a pair (p, d) it is in:

    pair(p, d) = r(p) + r(d) + link * [p names d's title, or d names p's]
                 + cover * IDF-weighted share of the question's terms found in p or d

with r(x) = the document's relevance + named * [the question names x's title]. So the bridge document,
weakly similar to the question on its own, ranks with the document that links to it, and a pair that
covers the question jointly beats two near-duplicates matching the same words (HotpotQA's distractors
were retrieved with the question's own words). Training-free reading of multi-hop dense retrieval
(Xiong et al., "Answering Complex Open-Domain Questions with Multi-Hop Dense Retrieval", ICLR 2021,
arXiv:2009.12756: score (question, p) then (question + p, d)) and of hyperlink-graph retrievers (Asai et
al., ICLR 2020, arXiv:1911.10470); bridge entities are hyperlinked titles by construction in HotpotQA
(Yang et al., EMNLP 2018, arXiv:1809.09600). Coverage of question terms by a set is the concept-coverage
objective of Gillick & Favre, "A Scalable Global Model for Summarization", ILP-NLP 2009.
"""

from __future__ import annotations

import numpy as np

from .lexical import terms


def question_coverage(question: str, doc_texts: list[str]) -> np.ndarray:
    """(D, D): IDF-weighted share of the question's terms that occur in document p or document d.

    IDF is over the context's documents (log(1 + D / (1 + df))), so a term every document has counts
    little; the diagonal is a single document's coverage."""
    q = sorted(set(terms(question)))
    n = len(doc_texts)
    if not q or n == 0:
        return np.zeros((n, n))
    col = {t: j for j, t in enumerate(q)}
    has = np.zeros((n, len(q)))
    for i, text in enumerate(doc_texts):
        for t in set(terms(text)) & col.keys():
            has[i, col[t]] = 1.0
    idf = np.log1p(n / (1.0 + has.sum(0)))
    own = has @ idf
    both = (has * idf) @ has.T
    return (own[:, None] + own[None, :] - both) / idf.sum()


def chain_scores(
    relevance: np.ndarray,
    links: np.ndarray,
    named: np.ndarray,
    coverage: np.ndarray,
    w_link: float,
    w_named: float,
    w_cover: float,
) -> np.ndarray:
    """(D,) best pair score of each document (see the module docstring); a lone document scores r(d).

    ``links[p, d]``: p names d's title; ``named[d]``: the question names d's title; ``coverage``: from
    :func:`question_coverage`. Links count in both directions (a bridge can name its source)."""
    r = relevance + w_named * named
    n = len(r)
    if n < 2:
        return r.astype(float)
    linked = np.maximum(links, links.T).astype(float)
    pair = r[:, None] + r[None, :] + w_link * linked + w_cover * coverage
    np.fill_diagonal(pair, -np.inf)
    return pair.max(1)


def within_doc_rank(scores: np.ndarray, doc_of: np.ndarray, eligible: np.ndarray) -> np.ndarray:
    """Rank (0 = best) of each eligible sentence among its document's eligible sentences; 0 elsewhere."""
    idx = np.flatnonzero(eligible)
    out = np.zeros(len(scores))
    if not len(idx):
        return out
    order = idx[np.lexsort((idx, -scores[idx], doc_of[idx]))]  # by document, then best first
    d = doc_of[order]
    start = np.r_[0, np.flatnonzero(d[1:] != d[:-1]) + 1]
    group_start = np.repeat(start, np.diff(np.r_[start, len(order)]))
    out[order] = np.arange(len(order)) - group_start
    return out
