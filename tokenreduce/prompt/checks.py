"""Argument checks for prompt compression, run before any model is loaded or any text is scored.

Each check raises :class:`ArgTypeError` (wrong type; both a TypeError and a ValueError) or
``ValueError`` (bad value), naming the parameter and what it accepts. Rules: ``bool`` is not a number;
numpy real scalars count as numbers; NaN and infinities are refused; a ``str`` is refused where a list of
strings is due (it would otherwise be read one character at a time); text must be valid Unicode (no lone
surrogates, which cannot be encoded as UTF-8 and crash tokenizers).
"""

from __future__ import annotations

import math
import os
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import fields
from typing import Any

import numpy as np

from .. import registry
from ..registry import is_int

_SURROGATE = re.compile("[\ud800-\udfff]")


class ArgTypeError(TypeError, ValueError):
    """An argument of the wrong type: a TypeError, and a ValueError like every other bad input here (so
    callers that catch ValueError for bad input keep working)."""


def _type(x: Any) -> str:
    return type(x).__name__


def is_real(x: Any) -> bool:
    """A real number (int, float, numpy real scalar), not a bool; NaN/inf are checked by the callers."""
    return registry.is_real(x, finite=False)


def check_text(text: str, what: str) -> str:
    """``text`` unchanged; ``ValueError`` naming the index of its first lone surrogate, if any."""
    m = _SURROGATE.search(text)
    if m:
        raise ValueError(
            f"{what} contains a lone surrogate at index {m.start()} ({m.group()!r}, not valid Unicode); "
            "decode the input with errors='replace' or remove the character"
        )
    return text


def check_context(context: Any) -> None:
    """``context``: a string, or an iterable of strings (documents), all valid Unicode."""
    if isinstance(context, str):
        check_text(context, "context")
        return
    if context is None or isinstance(context, (bytes, bytearray, Mapping)) or not isinstance(context, Iterable):
        raise ArgTypeError(f"context must be a string or a list of strings (documents), got {_type(context)}")


def check_documents(docs: list[Any]) -> None:
    """Each document is a string of valid Unicode."""
    for i, d in enumerate(docs):
        if not isinstance(d, str):
            raise ArgTypeError(f"context documents must be strings, got {_type(d)} at position {i}")
        check_text(d, f"context document {i}")


def check_question(question: Any) -> None:
    """``question``: None or a string of valid Unicode."""
    if question is None:
        return
    if not isinstance(question, str):
        raise ArgTypeError(f"question must be a string or None, got {_type(question)}")
    check_text(question, "question")


def check_rate(rate: Any) -> float:
    """``rate`` as a float in (0, 1]."""
    if not is_real(rate):
        raise ArgTypeError(f"rate must be a number in (0, 1] (fraction of tokens kept; 0.25 = 4x), got {_type(rate)}")
    if not 0 < float(rate) <= 1:  # also refuses NaN
        raise ValueError(f"rate must be in (0, 1] (fraction of tokens kept; 0.25 = 4x), got {rate!r}")
    return float(rate)


GRANULARITIES = ("sentence", "token")


def check_granularity(granularity: Any) -> str | None:
    """``granularity``: None (the method's own) or one of :data:`GRANULARITIES`."""
    if granularity is None:
        return None
    if not isinstance(granularity, str):
        raise ArgTypeError(f"granularity must be 'sentence', 'token' or None, got {_type(granularity)}")
    if granularity not in GRANULARITIES:
        raise ValueError(
            f"granularity must be 'sentence' (whole sentences) or 'token' (word-level trimming), got {granularity!r}"
        )
    return granularity


def check_bind_protected(bind_protected: Any) -> bool:
    """``bind_protected``: a bool."""
    if not isinstance(bind_protected, (bool, np.bool_)):
        raise ArgTypeError(f"bind_protected must be True or False, got {_type(bind_protected)}")
    return bool(bind_protected)


def check_target_tokens(target_tokens: Any) -> int:
    """``target_tokens`` as an int >= 1."""
    if not is_int(target_tokens):
        raise ArgTypeError(f"target_tokens must be a positive int, got {_type(target_tokens)} {target_tokens!r}")
    if target_tokens < 1:
        raise ValueError(f"target_tokens must be a positive int, got {target_tokens!r}")
    return int(target_tokens)


def check_budget(rate: Any, target_tokens: Any) -> None:
    """Exactly one of ``rate`` and ``target_tokens``, each of its type and range."""
    if (rate is None) == (target_tokens is None):
        raise ValueError("give exactly one of rate (fraction of tokens kept, 0 < rate <= 1) or target_tokens")
    if rate is not None:
        check_rate(rate)
    else:
        check_target_tokens(target_tokens)


def check_kinds_arg(kinds: Any, what: str) -> None:
    """``protect`` / ``force``: a list of kind names, not one string (that would be read letter by letter)."""
    if isinstance(kinds, str):
        raise ArgTypeError(f"{what} must be a list of kind names, not a string; use {what}=[{kinds!r}]")
    if kinds is None or not isinstance(kinds, Iterable):
        raise ArgTypeError(f"{what} must be a list of kind names (() for none), got {_type(kinds)}")


def check_keep(keep: Any) -> None:
    """``keep``: None or a list of non-empty strings, compiled regexes or (start, end) int pairs."""
    if keep is None:
        return
    if isinstance(keep, str):
        raise ArgTypeError(f"keep must be a list of strings, not a string; use keep=[{keep!r}]")
    if isinstance(keep, re.Pattern) or (isinstance(keep, tuple) and len(keep) == 2 and all(map(is_int, keep))):
        raise ArgTypeError(f"keep must be a list; use keep=[{keep!r}]")
    if not isinstance(keep, Iterable):
        raise ArgTypeError(f"keep must be a list of strings, regexes or (start, end) spans, got {_type(keep)}")
    for i, item in enumerate(keep):
        if isinstance(item, tuple):
            if len(item) != 2 or not all(map(is_int, item)):
                raise ArgTypeError(f"keep[{i}]: a span must be (start, end) character offsets (ints), got {item!r}")
        elif isinstance(item, str) and item:
            check_text(item, f"keep[{i}]")
        elif not isinstance(item, re.Pattern):
            raise ArgTypeError(f"keep[{i}] must be a non-empty string, a compiled regex or (start, end), got {item!r}")


def _check_field(name: str, value: Any, hint: Any, minimum: float | None) -> None:
    if hint is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ArgTypeError(f"{name} must be True or False, got {value!r}")
    elif hint is int:
        if not is_int(value):
            raise ArgTypeError(f"{name} must be an int, got {_type(value)} {value!r}")
    elif hint is float:
        if not is_real(value):
            raise ArgTypeError(f"{name} must be a number, got {_type(value)} {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
    elif str in typing.get_args(hint):  # "str | None": names and local folders (paths are fine too)
        if not (value is None or isinstance(value, (str, os.PathLike))):
            raise ArgTypeError(f"{name} must be a string (or None), got {_type(value)} {value!r}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")


def check_config(cfg: Any, owner: str, minimum: Mapping[str, float]) -> None:
    """Check every field of a method (a dataclass) against its annotated type (bool, int, float or
    str | None) and, for fields named in ``minimum``, its lower bound; called from ``__post_init__`` so a bad
    parameter fails when the method is made, before any model loads. Messages start with ``owner``."""
    hints = typing.get_type_hints(type(cfg))
    for f in fields(cfg):
        try:
            _check_field(f.name, getattr(cfg, f.name), hints.get(f.name), minimum.get(f.name))
        except ValueError as e:
            raise type(e)(f"{owner}: {e}") from None
