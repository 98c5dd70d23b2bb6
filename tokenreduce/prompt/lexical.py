"""Lexical relevance of sentences to a question: Okapi BM25 with IDF over the context's own sentences, and a
greedy ordering that rewards covering question terms the sentences ranked before have not covered yet.

Robertson & Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", FnTIR 2009; coverage as a
monotone submodular objective picked greedily: Lin & Bilmes, "A Class of Submodular Functions for Document
Summarization", ACL 2011 (concept coverage: Gillick & Favre, ILP-NLP 2009). Statistics come only from the
context being compressed (no external corpus), so scores are deterministic per input and need no index.
"""

from __future__ import annotations

import math
import re
from collections import Counter

import numpy as np

_TOKEN = re.compile(r"\w+", re.UNICODE)
STOPWORDS = frozenset(
    "a an the of in on at to for from by with and or but is are was were be been being do does did what which who "
    "whom whose when where why how that this these those it its as into than then there their they he she his her "
    "i you we our your my me us him them not no yes so if about over under after before during up down out can "
    "will would should could may might has have had name named".split()
)


def terms(text: str) -> list[str]:
    return [t for t in _TOKEN.findall(text.lower()) if t not in STOPWORDS]


def bm25_scores(query: str, docs: list[str], k1: float = 1.2, b: float = 0.75) -> np.ndarray:
    """BM25 score of each of ``docs`` for ``query`` (IDF from ``docs`` themselves)."""
    q = set(terms(query))
    toks = [terms(d) for d in docs]
    n = len(docs)
    if not q or n == 0:
        return np.zeros(n)
    df = Counter(t for ts in toks for t in set(ts) if t in q)
    avg = max(sum(len(t) for t in toks) / n, 1e-9)
    idf = {t: math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5)) for t in q}
    out = np.zeros(n)
    for i, ts in enumerate(toks):
        tf = Counter(t for t in ts if t in q)
        norm = k1 * (1 - b + b * len(ts) / avg)
        out[i] = sum(idf[t] * f * (k1 + 1) / (f + norm) for t, f in tf.items())
    return out


def coverage_order(
    scores: np.ndarray, sents: list[str], eligible: np.ndarray, question: str, weight: float, prefix: int = 5
) -> np.ndarray:
    """``scores`` with the eligible sentences re-ordered greedily by score + ``weight`` x the IDF-weighted share
    of the question's terms that the sentence has and no sentence picked before it has (a new fact, not a
    second mention of the entity every top sentence already names).

    Terms are compared by their first ``prefix`` characters (truncation stemming: "acquired" / "acquiring";
    0: whole words); IDF is BM25's, over ``sents``. Once no sentence left adds an uncovered term, the rest keep
    their score order. The eligible sentences get back their own score values, sorted, in the greedy order, so
    the scale is unchanged and ineligible ones (headings) keep theirs. ``weight=0`` returns ``scores``."""

    def cut(t: str) -> str:
        return t[:prefix] if prefix else t

    q = sorted({cut(t) for t in terms(question)})
    idx = np.flatnonzero(eligible)
    if weight == 0 or not q or len(idx) < 2:
        return scores
    col = {t: j for j, t in enumerate(q)}
    has = np.zeros((len(sents), len(q)))
    for i, s in enumerate(sents):
        for t in {cut(t) for t in terms(s)} & col.keys():
            has[i, col[t]] = 1.0
    n = len(sents)
    df = has.sum(0)
    idf = np.where(df > 0, np.log(1 + (n - df + 0.5) / (df + 0.5)), 0.0)
    if idf.sum() <= 0:
        return scores
    share = has[idx] * (idf / idf.sum())  # (E, Q): each eligible sentence's share of each question term
    uncovered = np.ones(len(q))
    left = np.ones(len(idx), dtype=bool)
    picks: list[int] = []
    base = scores[idx]
    while left.any():
        gain = share @ uncovered
        if not (gain[left] > 0).any():
            break
        j = int(np.argmax(np.where(left, base + weight * gain, -np.inf)))  # ties: the earlier sentence
        picks.append(j)
        left[j] = False
        uncovered[has[idx[j]] > 0] = 0.0
    rest = np.flatnonzero(left)
    order = np.r_[np.array(picks, dtype=np.int64), rest[np.argsort(-base[rest], kind="stable")]]
    out = scores.astype(float).copy()
    out[idx[order]] = np.sort(base)[::-1]
    return out
