"""Prompt-method base classes, the plan a scorer returns, and the registry of methods by name.

A method is a small frozen dataclass of its parameters, registered by name and checked when it is
made (:func:`..checks.check_config`: each field's annotated type, and the lower bounds the method
declares in ``minimums``), so a bad parameter fails before any model loads. ``load()`` returns a
:class:`Scorer` that holds the method's models (nothing is cached globally); a method that needs no
model is its own scorer (:class:`ModelFreeMethod`). A scorer's ``plan(seg, question)`` returns a
:class:`Plan`: piece indices by priority (most important first) and optionally an output order. The
budget controller (:mod:`..budget`) turns a plan into an exact keep-mask.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, TypeVar

import numpy as np

from ...registry import Registry
from ..checks import ArgTypeError, check_config
from ..segment import Segmentation


@dataclass(frozen=True)
class Plan:
    priority: np.ndarray  # piece indices, most important first
    order: np.ndarray | None = None  # output order of pieces (None: original order)
    # (P,) bool: a document's heading line; with whole sentences it is kept exactly when something else of its
    # document is (never alone). Token granularity ignores it (the heading ranks in ``priority``).
    headings: np.ndarray | None = None


class Scorer:
    """A loaded method: plans one segmented context. ``own_tokenizer`` is the method's own tokenizer,
    which counts the budget when no other tokenizer is given or available (None: there is none).
    ``granularity``: how the budget is filled unless the caller says otherwise: ``"sentence"`` (whole
    sentences, in the order of their best piece) or ``"token"`` (piece by piece, for methods that rank words)."""

    name: str = ""
    own_tokenizer: Any = None
    granularity: str = "sentence"

    def plan(self, seg: Segmentation, question: str | None) -> Plan:  # pragma: no cover - abstract
        """Pieces of ``seg`` by priority (and optionally an output order), given the question if any."""
        raise NotImplementedError


@dataclass(frozen=True)
class PromptMethod:
    """A prompt-compression method's parameters; ``load()`` gives the scorer that runs it."""

    name: ClassVar[str] = ""
    minimums: ClassVar[Mapping[str, float]] = {}  # lower bound of each numeric field that has one

    def __post_init__(self) -> None:
        check_config(self, self.name, self.minimums)

    def load(self) -> Scorer:  # pragma: no cover - abstract
        """The scorer, with the method's models loaded (local files only, nothing is downloaded)."""
        raise NotImplementedError


class ModelFreeMethod(PromptMethod, Scorer):
    """A method that needs no model: it plans directly, and ``load()`` returns the method itself."""

    def load(self) -> ModelFreeMethod:
        return self


M = TypeVar("M", bound=type[PromptMethod])
REGISTRY: Registry[PromptMethod] = Registry("prompt method", PromptMethod)


def register(name: str) -> Callable[[M], M]:
    """Class decorator: make a method available as ``compress_prompt(..., method=name)``."""

    def wrap(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, PromptMethod)):
            raise TypeError(f"prompt method {name!r} must subclass PromptMethod, got {cls!r}")
        if "__dataclass_fields__" not in vars(cls) or not cls.__dataclass_params__.frozen:
            raise TypeError(f"prompt method {name!r}: decorate {cls.__name__} with @dataclass(frozen=True)")
        return REGISTRY.register(name)(cls)

    return wrap


def prompt_methods() -> list[str]:
    """Names of the registered prompt-compression methods."""
    return REGISTRY.names()


def make_prompt_method(method: str | PromptMethod, **params: Any) -> PromptMethod:
    """The method ``method`` (a name) with ``params``, checked; a method object passes through unchanged.
    Unknown names or parameters raise ``ValueError``."""
    return REGISTRY.make(method, **params)


def check_method(method: Any) -> None:
    """``method``: a registered method name, a method object, or an already loaded scorer."""
    if not isinstance(method, (str, PromptMethod, Scorer)):
        raise ArgTypeError(
            f"method must be a method name ({', '.join(prompt_methods())}) or a method object, "
            f"got {type(method).__name__}"
        )


def sentence_priority(seg: Segmentation, sent_scores: np.ndarray) -> np.ndarray:
    """Pieces ordered by their sentence's score (ties: earlier first), original order within a sentence."""
    rank = np.argsort(-sent_scores, kind="stable")
    pos = np.empty_like(rank)
    pos[rank] = np.arange(len(rank))
    return np.lexsort((np.arange(len(seg)), pos[seg.sent]))


def word_priority(piece_scores: np.ndarray) -> np.ndarray:
    """Pieces by score, ties broken by position (deterministic)."""
    return np.lexsort((np.arange(len(piece_scores)), -piece_scores))
