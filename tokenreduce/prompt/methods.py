"""Prompt-compression methods: small frozen dataclasses registered by name.

A method's config is a frozen dataclass; ``load()`` returns a scorer that holds its models (nothing
is cached globally). A scorer's ``plan(seg, question)`` returns a :class:`Plan`: piece indices by
priority (most important first) and optionally an output order. The budget controller
(:mod:`.budget`) turns a plan into an exact keep-mask.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..registry import Registry
from .segment import Segmentation

REGISTRY: Registry[Any] = Registry("prompt method", object)


@dataclass(frozen=True)
class Plan:
    priority: np.ndarray  # piece indices, most important first
    order: np.ndarray | None = None  # output order of pieces (None: original order)


class Scorer(Protocol):
    name: str
    own_tokenizer: Any  # the method's own tokenizer (fallback budget tokenizer)

    def plan(self, seg: Segmentation, question: str | None) -> Plan: ...


def register_prompt_method(cls: type) -> type:
    """Class decorator registering a method config under its ``name``."""
    return REGISTRY.register(cls.name)(cls)


def prompt_methods() -> list[str]:
    """Names of the registered prompt-compression methods."""
    return REGISTRY.names()


def make_prompt_method(name: str, **params: Any):
    """The config dataclass of method ``name``; unknown names or parameters raise ``ValueError``."""
    return REGISTRY.make(name, **params)


def sentence_priority(seg: Segmentation, sent_scores: np.ndarray) -> np.ndarray:
    """Pieces ordered by their sentence's score (ties: earlier first), original order within a sentence."""
    rank = np.argsort(-sent_scores, kind="stable")
    pos = np.empty_like(rank)
    pos[rank] = np.arange(len(rank))
    return np.lexsort((np.arange(len(seg)), pos[seg.sent]))


def word_priority(piece_scores: np.ndarray) -> np.ndarray:
    """Pieces by score, ties broken by position (deterministic)."""
    return np.lexsort((np.arange(len(piece_scores)), -piece_scores))
