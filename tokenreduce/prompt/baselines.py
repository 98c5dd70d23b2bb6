"""Baselines every compression method must beat: random sentences and the first sentences (first-k).

Both keep whole sentences in original order under the same exact budget controller; they need no model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .checks import check_config
from .methods import Plan, register_prompt_method, sentence_priority
from .segment import Segmentation


@dataclass(frozen=True)
class _Baseline:
    own_tokenizer = None

    def load(self):
        return self


@register_prompt_method
@dataclass(frozen=True)
class RandomSentences(_Baseline):
    """Random sentences (seeded), kept in original order."""

    name = "random"
    seed: int = 0

    def __post_init__(self) -> None:
        check_config(self, {"seed": 0})

    def plan(self, seg: Segmentation, question: str | None) -> Plan:
        n = int(seg.sent[-1]) + 1 if len(seg) else 0
        scores = np.random.default_rng(self.seed).random(n)
        return Plan(sentence_priority(seg, scores))


@register_prompt_method
@dataclass(frozen=True)
class FirstSentences(_Baseline):
    """The leading sentences of the context (first-k)."""

    name = "first"

    def plan(self, seg: Segmentation, question: str | None) -> Plan:
        return Plan(np.arange(len(seg)))
