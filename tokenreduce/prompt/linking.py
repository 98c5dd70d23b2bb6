"""Document links for multi-hop questions: a document whose title is named in the question or in the
best-scoring documents gets a boost, so the *bridge* document (relevant only through another one) survives.

A document's title is its first line when that line is a short heading ("Title: X", "# X", "X"), with a
"Title:"-style label stripped; a trailing parenthetical ("Lee (singer)") is optional when matching.
Matching is whole-word and case-insensitive on the SQuAD-style normalized text. The idea of following
entity/title links from retrieved passages is that of multi-hop retrievers such as Nie et al.,
"Revealing the Importance of Semantic Retrieval for Machine Reading at Scale", EMNLP 2019, and Asai et al.,
"Learning to Retrieve Reasoning Paths over Wikipedia Graph for Question Answering", ICLR 2020 (arXiv:1911.10470).
"""

from __future__ import annotations

import re

import numpy as np

from .lexical import STOPWORDS

_LABEL = re.compile(r"^\s*(?:#+\s*|(?:title|heading|document|doc)\s*[:\-]\s*)", re.IGNORECASE)
_PAREN = re.compile(r"\s*\([^)]*\)\s*$")
_NONWORD = re.compile(r"[^\w]+", re.UNICODE)
_SENT_END = re.compile(r"[.!?。！？][\"')\]»”’]*$")  # a heading line does not end like a sentence
MAX_TITLE_WORDS = 12


def _norm(text: str) -> str:
    return " " + " ".join(_NONWORD.sub(" ", text.lower()).split()) + " "


def title_variants(first_line: str) -> list[str]:
    """Normalized match strings of a heading line (with and without a trailing parenthetical); [] when the
    line is not a usable title (too long, or only stopwords)."""
    t = _LABEL.sub("", first_line).strip()
    if not t or len(t.split()) > MAX_TITLE_WORDS:
        return []
    out = []
    for v in dict.fromkeys([t, _PAREN.sub("", t)]):
        n = _norm(v)
        words = n.split()
        if words and any(w not in STOPWORDS for w in words) and len(n.strip()) >= 3:
            out.append(n)
    return out


def doc_titles(sents: list[str], doc_of: np.ndarray) -> list[list[str]]:
    """Title variants per document: from its first sentence when that is a heading (no sentence-final
    punctuation, followed by more text of the same document)."""
    n_docs = int(doc_of.max()) + 1 if len(doc_of) else 0
    out: list[list[str]] = [[] for _ in range(n_docs)]
    first = np.r_[0, np.flatnonzero(doc_of[1:] != doc_of[:-1]) + 1] if len(doc_of) else np.zeros(0, int)
    for i in first:
        d = int(doc_of[i])
        has_body = i + 1 < len(doc_of) and doc_of[i + 1] == d
        if has_body and not _SENT_END.search(sents[i]):
            out[d] = title_variants(sents[i])
    return out


def link_scores(
    sents: list[str],
    doc_of: np.ndarray,
    doc_score: np.ndarray,
    question: str | None,
    k: int,
    from_question: bool = True,
) -> np.ndarray:
    """Per-document link strength in [0, 1]: 1 when the question names the document's title (if
    ``from_question``), else the
    largest ``doc_score`` rank weight (1 for the best document, 1/2 for the second, ...) among the ``k``
    best other documents whose text names it."""
    titles = doc_titles(sents, doc_of)
    n_docs = len(titles)
    texts = [""] * n_docs
    for s, d in zip(sents, doc_of):
        texts[int(d)] += " " + s
    norm_text = [_norm(t) for t in texts]
    q = _norm(question) if question and from_question else None
    seeds = np.argsort(-doc_score, kind="stable")[:k]
    out = np.zeros(n_docs)
    for d, variants in enumerate(titles):
        if not variants:
            continue
        if q is not None and any(v in q for v in variants):
            out[d] = 1.0
            continue
        for rank, s in enumerate(seeds):
            if s != d and any(v in norm_text[s] for v in variants):
                out[d] = max(out[d], 1.0 / (rank + 1))
    return out
