"""``longllmlingua``: question-aware word dropping across documents ranked by the question.

Documents are ranked by how likely they make the question (mean NLL of the question given the
document), then kept in that order while their least informative words are dropped first across
document boundaries (a dynamic per-document ratio). Without a question it is ``perplexity``'s plan.
Jiang et al., "LongLLMLingua: Accelerating and Enhancing LLMs in Long Context Scenarios via Prompt
Compression", ACL 2024 (arXiv:2310.06839).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..segment import Segmentation
from .base import Plan, register, word_priority
from .causal_lm import CausalLMMethod, CausalLMScorer, percentile_rank

W_SENTENCE = 0.5  # without a question: the sentence term of ``perplexity``'s default plan


@register("longllmlingua")
@dataclass(frozen=True)
class LongLLMLingua(CausalLMMethod):
    """Question-aware: documents ranked by p(question | document), then word dropping across them.

    Jiang et al., LongLLMLingua, ACL 2024 (arXiv:2310.06839)."""

    w_token: float = 1.5  # weight of a word's surprisal rank against its document's rank

    def load(self, lm: tuple[Any, Any] | None = None) -> LongLLMLinguaScorer:
        """The scorer with ``lm`` (model, tokenizer), or with the LM ``model`` names."""
        return LongLLMLinguaScorer(self, *self.load_lm(lm))


class LongLLMLinguaScorer(CausalLMScorer):
    """:class:`LongLLMLingua` with its LM loaded."""

    cfg: LongLLMLingua

    def plan(self, seg: Segmentation, question: str | None) -> Plan:
        if not question:
            return self.surprisal_plan(seg, W_SENTENCE)
        s, q_nll = self.piece_surprisal(seg, question)
        rank = np.empty(len(q_nll))
        rank[np.lexsort((np.arange(len(q_nll)), q_nll))] = np.arange(len(q_nll))
        return Plan(word_priority(-rank[seg.doc] + self.cfg.w_token * percentile_rank(s)))
