"""``extractive``: question-aware extractive compression: keep the sentences most relevant to the question.

Sentences are scored with a bi-encoder (all-MiniLM-L6-v2 by default; Reimers & Gurevych,
"Sentence-BERT", EMNLP 2019) combined with their document's relevance, their neighbours' relevance,
and lexical BM25 over the context's own sentences (Robertson & Zaragoza 2009). For several documents,
multi-hop evidence is added: title links (:mod:`.linking`), the best two-document chain each document
belongs to (:mod:`.chains`), the question's expected answer type (:mod:`.qtype`), a sentence-level
second hop (the documents whose titles the best sentences name: the bridge entity's own sentences),
diminishing returns for further sentences of one document, and a greedy pass that moves up the sentences
covering question terms the sentences ranked before them do not have (:func:`..lexical.coverage_order`); a
document's title line is kept with its first kept sentence. The best sentences are kept whole under an exact
global budget (``granularity="token"`` of the compressor: the last one may be cut at word level to hit it), in
original order unless ``reorder=True``.
Without a question, sentences are scored by closeness to the context's centroid. Weights ``w_*`` = 0
turn a component off (``w_bm25=0`` is the embedding-only variant).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..chains import chain_scores, question_coverage, within_doc_rank
from ..lexical import bm25_scores, coverage_order
from ..linking import acronym, acronyms_in, doc_texts, doc_titles, heading_sentences, link_matrix, link_scores, named_in
from ..qtype import answer_type_scores
from ..segment import Segmentation
from ..text_encoder import SentenceEmbedder, load_text_encoder
from .base import Plan, PromptMethod, Scorer, register, sentence_priority


@register("extractive")
@dataclass(frozen=True)
class Extractive(PromptMethod):
    """Sentence extraction by embedding + BM25 relevance to the question.

    Sentence-BERT embeddings (Reimers & Gurevych, EMNLP 2019) + BM25 (Robertson & Zaragoza, 2009),
    with multi-document links, two-hop chains and answer types (see the module docstring)."""

    model: str | None = None  # local HF encoder folder; None: all-MiniLM-L6-v2
    w_doc: float = 0.5
    w_neighbor: float = 0.15
    w_bm25: float = 0.3
    w_hop: float = 0.0
    hop_k: int = 2
    w_link: float = 0.3
    link_k: int = 2
    link_question: bool = True
    w_chain: float = 0.5  # two-hop chains (prompt/chains.py); 0: off
    chain_link: float = 1.0
    chain_named: float = 0.6
    chain_cover: float = 3.0
    w_type: float = 0.2  # expected answer type (prompt/qtype.py)
    doc_decay: float = 0.1  # diminishing returns: minus doc_decay x the sentence's rank within its document
    w_bridge: float = 2.0  # sentence-level second hop: documents named in the best bridge_k sentences (0: off)
    bridge_k: int = 2
    bridge_by_score: bool = True  # the bridge document's sentences lifted in order of relevance (False: lead first)
    dedup: bool = True  # a sentence repeated verbatim (duplicated passages) ranks last after its first copy
    w_coverage: float = 1.0  # greedy question-term coverage (lexical.coverage_order); 0: off
    coverage_prefix: int = 5  # terms compared by their first characters (0: whole words)
    keep_titles: bool = True
    reorder: bool = False
    batch_size: int = 16  # small length-sorted batches: least padding, cache-friendly (fastest on 2 CPU cores)
    max_length: int = 128

    minimums = {
        "hop_k": 1, "link_k": 0, "bridge_k": 1, "batch_size": 1, "max_length": 1, "w_coverage": 0, "coverage_prefix": 0
    }

    def load(self, encoder: SentenceEmbedder | None = None) -> ExtractiveScorer:
        """The scorer with ``encoder``, or with the encoder ``model`` names (all-MiniLM-L6-v2 by default)."""
        return ExtractiveScorer(self, encoder or load_text_encoder(self.model, max_length=self.max_length))


def _doc_reduce(values: np.ndarray, doc_of: np.ndarray, n_docs: int) -> np.ndarray:
    out = np.full(n_docs, -np.inf)
    np.maximum.at(out, doc_of, values)
    return out


def sentence_docs(seg: Segmentation) -> np.ndarray:
    """Document id of each sentence."""
    first = np.r_[0, np.flatnonzero(seg.sent[1:] != seg.sent[:-1]) + 1]
    return seg.doc[first]


def titles_first(scores: np.ndarray, seg: Segmentation) -> np.ndarray:
    """Give each document's heading line its document's best score, so it is kept just before (ties go to
    the earlier sentence) the first sentence kept from that document: kept text always says what it is from."""
    doc_of = sentence_docs(seg)
    heads = heading_sentences(seg.sentence_texts(), doc_of)
    best = _doc_reduce(scores, doc_of, len(heads))
    out = scores.copy()
    ok = heads >= 0
    out[heads[ok]] = best[ok]
    return out


def heading_pieces(seg: Segmentation) -> np.ndarray:
    """(P,) bool: the pieces of each document's heading line (:func:`.linking.heading_sentences`)."""
    heads = heading_sentences(seg.sentence_texts(), sentence_docs(seg))
    return np.isin(seg.sent, heads[heads >= 0])


def _bridge(
    score: np.ndarray, sents: list[str], doc_of: np.ndarray, body: np.ndarray, k: int, by_score: bool = False,
    heads: np.ndarray | None = None,
) -> np.ndarray:
    """Sentence-level second hop: the body sentences of each document whose title is named in one of the ``k``
    best body sentences of *other* documents get 1 / (rank of that naming sentence), by their rank within their
    own document (1 for the first, 1/2 for the second, ...): the bridge entity's own sentences, which the
    question does not name, are read next (multi-hop dense retrieval's second step, Xiong et al., ICLR 2021,
    done with titles as hyperlinks). The rank inside the bridge document is by ``score`` when ``by_score`` (its
    most relevant sentence first: the fact asked about is often not the lead), else by position (lead first).
    ``heads``: the documents' heading sentences (:func:`.linking.heading_sentences`, computed when not given)."""
    heads = heading_sentences(sents, doc_of) if heads is None else heads
    titles = doc_titles(sents, doc_of, heads)
    short = np.array([acronym(sents[h]) if h >= 0 else None for h in heads], dtype=object)
    top = [i for i in np.argsort(-np.where(body, score, -np.inf), kind="stable")[:k] if body[i]]
    weight = np.zeros(len(titles))
    for r, i in enumerate(top):
        named = named_in(sents[i], titles) | np.isin(short, list(acronyms_in(sents[i])))
        named[doc_of[i]] = False
        weight = np.maximum(weight, named / (r + 1.0))
    order = within_doc_rank(score if by_score else -np.arange(len(sents), dtype=float), doc_of, body)
    return np.where(body, weight[doc_of] / (1.0 + order), 0.0)


def _repeats_last(score: np.ndarray, sents: list[str], body: np.ndarray) -> np.ndarray:
    """Scores with every body sentence that repeats a better-scored one word for word (case and spacing aside)
    moved below all others, keeping their order: a second copy adds no information but costs budget."""
    seen: set[str] = set()
    repeat = np.zeros(len(sents), dtype=bool)
    for i in np.argsort(-score, kind="stable"):
        if body[i]:
            key = " ".join(sents[i].lower().split())
            repeat[i] = key in seen
            seen.add(key)
    if not repeat.any():
        return score
    out = score.copy()
    out[repeat] = score[repeat] - (score.max() - score.min()) - 1.0
    return out


class ExtractiveScorer(Scorer):
    """:class:`Extractive` with its sentence encoder loaded."""

    def __init__(self, cfg: Extractive, encoder: SentenceEmbedder) -> None:
        self.cfg, self.encoder, self.name = cfg, encoder, cfg.name
        self.own_tokenizer = encoder.tokenizer

    def sentence_scores(self, seg: Segmentation, question: str | None) -> np.ndarray:
        sents = seg.sentence_texts()
        doc_of = sentence_docs(seg)
        n_docs = int(doc_of.max()) + 1
        texts = sents + ([question] if question else [])
        with torch.inference_mode():
            emb = self.encoder.embed([t or "." for t in texts], batch_size=self.cfg.batch_size).numpy()
        s_emb = emb[: len(sents)]
        if question:
            q = emb[-1]
        else:
            c = s_emb.mean(0)
            q = c / max(np.linalg.norm(c), 1e-9)
        cos = s_emb @ q
        score = cos.copy()
        c = self.cfg
        if c.w_doc:
            score += c.w_doc * _doc_reduce(cos, doc_of, n_docs)[doc_of]
        if c.w_neighbor and len(sents) > 1:
            prev = np.r_[-np.inf, np.where(doc_of[1:] == doc_of[:-1], cos[:-1], -np.inf)]
            nxt = np.r_[np.where(doc_of[1:] == doc_of[:-1], cos[1:], -np.inf), -np.inf]
            nb = np.maximum(prev, nxt)
            score += c.w_neighbor * np.where(np.isfinite(nb), nb, 0.0)
        if c.w_bm25 and question:
            bm = bm25_scores(question, sents)
            if bm.max() > 0:
                score += c.w_bm25 * bm / bm.max()
        if c.w_link:
            doc_score = _doc_reduce(score, doc_of, n_docs)
            link = link_scores(sents, doc_of, doc_score, question, c.link_k, c.link_question)
            score = score + c.w_link * link[doc_of]
        if c.w_hop and question and len(sents) > c.hop_k:
            score = score + c.w_hop * self._hop(score, sents, s_emb, question)
        body = np.ones(len(sents), dtype=bool)
        heads = heading_sentences(sents, doc_of)
        body[heads[heads >= 0]] = False
        if c.w_chain and question and n_docs > 1:
            score = score + c.w_chain * self._chains(score, sents, doc_of, body, heads, question)[doc_of]
        if c.w_type and question:
            score = score + c.w_type * answer_type_scores(question, sents)
        if c.w_bridge and question and n_docs > 1:
            score = score + c.w_bridge * _bridge(score, sents, doc_of, body, c.bridge_k, c.bridge_by_score, heads)
        if c.doc_decay:
            score = score - c.doc_decay * within_doc_rank(score, doc_of, body)
        if c.dedup:
            score = _repeats_last(score, sents, body)
        if c.w_coverage and question:
            score = coverage_order(score, sents, body, question, c.w_coverage, c.coverage_prefix)
        return score

    def _chains(self, score, sents, doc_of, body, heads, question) -> np.ndarray:
        """Per-document two-hop chain score (prompt/chains.py) from the documents' best body sentences."""
        c = self.cfg
        n_docs = int(doc_of.max()) + 1
        relevance = _doc_reduce(np.where(body, score, -np.inf), doc_of, n_docs)
        relevance = np.where(np.isfinite(relevance), relevance, _doc_reduce(score, doc_of, n_docs))
        titles = doc_titles(sents, doc_of, heads)
        links = link_matrix(sents, doc_of, titles)
        cover = question_coverage(question, doc_texts(sents, doc_of, n_docs))
        named = named_in(question, titles)
        return chain_scores(relevance, links, named, cover, c.chain_link, c.chain_named, c.chain_cover)

    def _hop(self, score: np.ndarray, sents: list[str], s_emb: np.ndarray, question: str) -> np.ndarray:
        """Second hop (pseudo-relevance feedback): relevance to the question expanded with the ``hop_k``
        best sentences, lexically (BM25) and by embedding; finds bridge facts the question does not name."""
        top = np.argsort(-score, kind="stable")[: self.cfg.hop_k]
        centre = s_emb[top].mean(0)
        emb = s_emb @ (centre / max(np.linalg.norm(centre), 1e-9))
        lex = bm25_scores(question + " " + " ".join(sents[i] for i in top), sents)
        return 0.5 * emb + 0.5 * (lex / lex.max() if lex.max() > 0 else lex)

    def plan(self, seg: Segmentation, question: str | None) -> Plan:
        scores = self.sentence_scores(seg, question)
        if self.cfg.keep_titles:
            scores = titles_first(scores, seg)
        priority = sentence_priority(seg, scores)
        headings = heading_pieces(seg) if self.cfg.keep_titles else None
        return Plan(priority, priority if self.cfg.reorder else None, headings)
