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
from .segment import HEADING_LINE, ends_sentence

_LABEL = re.compile(r"^\s*(?:#+\s*|(?:title|heading|document|doc)\s*[:\-]\s*)", re.IGNORECASE)
_PAREN = re.compile(r"\s*\([^)]*\)\s*$")
_NONWORD = re.compile(r"[^\w]+", re.UNICODE)
MAX_TITLE_WORDS = 12
MAX_TITLE_CHARS = 200  # longer first lines are not titles (and would cost _PAREN quadratic time)


def _norm(text: str) -> str:
    return " " + " ".join(_NONWORD.sub(" ", text.lower()).split()) + " "


def title_variants(first_line: str) -> list[str]:
    """Normalized match strings of a heading line (with and without a trailing parenthetical); [] when the
    line is not a usable title (too long, or only stopwords)."""
    t = _LABEL.sub("", first_line).strip()
    if not t or len(t) > MAX_TITLE_CHARS or len(t.split()) > MAX_TITLE_WORDS:
        return []
    out = []
    for v in dict.fromkeys([t, _PAREN.sub("", t)]):
        n = _norm(v)
        words = n.split()
        if words and any(w not in STOPWORDS for w in words) and len(n.strip()) >= 3:
            out.append(n)
    return out


def acronym(first_line: str) -> str | None:
    """The initials of a heading line's title, lower-cased ("Special Air Service" -> "sas", "Gesellschaft mit
    beschränkter Haftung" -> "gmbh"), or None for titles of fewer than two words."""
    t = _PAREN.sub("", _LABEL.sub("", first_line).strip())
    words = _NONWORD.sub(" ", t).split()
    if len(words) < 2 or len(t) > MAX_TITLE_CHARS or len(words) > MAX_TITLE_WORDS:
        return None
    return "".join(w[0] for w in words).lower()


_CAPS_WORD = re.compile(r"\b\w*[A-Z]\w*[A-Z]\w*\b")


def acronyms_in(text: str) -> set[str]:
    """Lower-cased words of ``text`` with at least two capitals (SAS, GmbH, NATO): candidate acronyms."""
    return {w.lower() for w in _CAPS_WORD.findall(text)}


def heading_sentences(sents: list[str], doc_of: np.ndarray) -> np.ndarray:
    """Per document, the index of its heading sentence (-1 if none): its first sentence when that is followed by
    more text of the same document and is a labelled heading line (:data:`.segment.HEADING_LINE`, any length) or
    is short and does not end like a sentence."""
    n_docs = int(doc_of.max()) + 1 if len(doc_of) else 0
    out = np.full(n_docs, -1, dtype=np.int64)
    first = np.r_[0, np.flatnonzero(doc_of[1:] != doc_of[:-1]) + 1] if len(doc_of) else np.zeros(0, int)
    for i in first:
        d = int(doc_of[i])
        has_body = i + 1 < len(doc_of) and doc_of[i + 1] == d
        words = sents[i].split()
        short = bool(words) and not ends_sentence(words[-1]) and len(words) <= MAX_TITLE_WORDS + 1
        if has_body and (short or HEADING_LINE.match(sents[i])):
            out[d] = i
    return out


def doc_titles(sents: list[str], doc_of: np.ndarray, heads: np.ndarray | None = None) -> list[list[str]]:
    """Title variants per document, from its heading sentence (``heads``: :func:`heading_sentences`, computed
    here when not given)."""
    heads = heading_sentences(sents, doc_of) if heads is None else heads
    return [title_variants(sents[h]) if h >= 0 else [] for h in heads]


def doc_texts(sents: list[str], doc_of: np.ndarray, n_docs: int) -> list[str]:
    """Normalized full text of each document (for whole-word title matching)."""
    texts = [""] * n_docs
    for s, d in zip(sents, doc_of):
        texts[int(d)] += " " + s
    return [_norm(t) for t in texts]


def link_matrix(sents: list[str], doc_of: np.ndarray, titles: list[list[str]] | None = None) -> np.ndarray:
    """(D, D) bool: ``[p, d]`` when document p's text names document d's title (p != d)."""
    titles = doc_titles(sents, doc_of) if titles is None else titles
    texts = doc_texts(sents, doc_of, len(titles))
    out = np.zeros((len(titles), len(titles)), dtype=bool)
    for d, variants in enumerate(titles):
        if variants:
            for p, t in enumerate(texts):
                out[p, d] = p != d and any(v in t for v in variants)
    return out


def named_in(text: str | None, titles: list[list[str]]) -> np.ndarray:
    """(D,) bool: the document's title is named in ``text`` (e.g. the question)."""
    t = _norm(text) if text else None
    return np.array([t is not None and any(v in t for v in variants) for variants in titles], dtype=bool)


def link_scores(
    sents: list[str],
    doc_of: np.ndarray,
    doc_score: np.ndarray,
    question: str | None,
    k: int,
    from_question: bool = True,
) -> np.ndarray:
    """Per-document link strength in [0, 1]: 1 when the question names the document's title (if
    ``from_question``), else the largest ``doc_score`` rank weight (1 for the best document, 1/2 for the
    second, ...) among the ``k`` best other documents whose text names it."""
    titles = doc_titles(sents, doc_of)
    links = link_matrix(sents, doc_of, titles)
    seeds = np.argsort(-doc_score, kind="stable")[:k]
    weight = np.zeros(len(titles))
    weight[seeds] = 1.0 / (np.arange(len(seeds)) + 1)
    out = (links * weight[:, None]).max(0) if len(titles) else np.zeros(0)
    if from_question:
        out[named_in(question, titles)] = 1.0
    return out
