"""Lexical relevance of sentences to a question: Okapi BM25 with IDF over the context's own sentences.

Robertson & Zaragoza, "The Probabilistic Relevance Framework: BM25 and Beyond", FnTIR 2009.
Statistics come only from the context being compressed (no external corpus), so scores are
deterministic per input and need no index.
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
