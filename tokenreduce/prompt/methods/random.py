"""``random``: random sentences (seeded), kept in original order: the floor every method must beat.

Needs no model; the same exact budget controller as every method, so it isolates what scoring adds.
A baseline with no paper of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..segment import Segmentation
from .base import ModelFreeMethod, Plan, register, sentence_priority


@register("random")
@dataclass(frozen=True)
class RandomSentences(ModelFreeMethod):
    """Random sentences (seeded), kept in original order."""

    seed: int = 0

    minimums = {"seed": 0}

    def plan(self, seg: Segmentation, question: str | None) -> Plan:
        n = int(seg.sent[-1]) + 1 if len(seg) else 0
        scores = np.random.default_rng(self.seed).random(n)
        return Plan(sentence_priority(seg, scores))
