"""``perplexity``: drop the words a small causal LM finds most predictable.

Words are kept by their mean surprisal per token, mixed with their sentence's surprisal (a coarse
sentence-level term as in LLMLingua's budget controller). Li et al., "Compressing Context to Enhance
Inference Efficiency of Large Language Models" (Selective Context), EMNLP 2023; Jiang et al.,
"LLMLingua: Compressing Prompts for Accelerated Inference of Large Language Models", EMNLP 2023.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..segment import Segmentation
from .base import Plan, register
from .causal_lm import CausalLMMethod, CausalLMScorer


@register("perplexity")
@dataclass(frozen=True)
class Perplexity(CausalLMMethod):
    """Drop the most predictable words (Selective Context / LLMLingua style).

    Li et al., Selective Context, EMNLP 2023; Jiang et al., LLMLingua, EMNLP 2023."""

    w_sentence: float = 0.5  # weight of the sentence's surprisal rank

    def load(self, lm: tuple[Any, Any] | None = None) -> PerplexityScorer:
        """The scorer with ``lm`` (model, tokenizer), or with the LM ``model`` names."""
        return PerplexityScorer(self, *self.load_lm(lm))


class PerplexityScorer(CausalLMScorer):
    """:class:`Perplexity` with its LM loaded."""

    cfg: Perplexity

    def plan(self, seg: Segmentation, question: str | None) -> Plan:
        return self.surprisal_plan(seg, self.cfg.w_sentence)
