"""``first``: the leading sentences of the context (first-k), the baseline every method must beat.

Keeps whole sentences in original order under the same exact budget controller; needs no model.
A strong baseline on inputs that put what matters first (news, abstracts): the lead-3 baseline of
See et al., "Get To The Point: Summarization with Pointer-Generator Networks", ACL 2017.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..segment import Segmentation
from .base import ModelFreeMethod, Plan, register


@register("first")
@dataclass(frozen=True)
class FirstSentences(ModelFreeMethod):
    """The leading sentences of the context (first-k).

    Lead-k baseline (See et al., ACL 2017)."""

    def plan(self, seg: Segmentation, question: str | None) -> Plan:
        return Plan(np.arange(len(seg)))
