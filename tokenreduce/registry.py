"""One small registry type for everything selected by name: encoder methods, KV presses, prompt and VLM methods.

Each package owns its own ``Registry`` instance (no shared global table); entries are frozen
dataclasses, so ``make`` can validate parameter names before any compute.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import fields
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ParamError(TypeError, ValueError):
    """Unknown parameter names (a TypeError like a bad keyword, and a ValueError like bad input)."""


_KINDS = {"int": "an int", "float": "a real number", "bool": "a bool (true/false)", "str": "a string"}


def is_bool(value: Any) -> bool:
    """A Python or numpy bool."""
    return isinstance(value, bool) or type(value).__name__ == "bool_"


def is_int(value: Any) -> bool:
    """An integer (int, numpy integer), not a bool: True is not a number here, however Python counts it."""
    return isinstance(value, numbers.Integral) and not is_bool(value)


def is_real(value: Any, finite: bool = True) -> bool:
    """A real number (int, float, numpy real), not a bool; ``finite``: NaN and inf refused too."""
    return isinstance(value, numbers.Real) and not is_bool(value) and (not finite or math.isfinite(float(value)))


def _fits(value: Any, kind: str) -> bool:
    checks = {"bool": is_bool, "int": is_int, "float": is_real}
    return checks[kind](value) if kind in checks else isinstance(value, str)


def check_field_types(obj: Any, owner: str) -> None:
    """Raise ValueError if a field annotated ``int``/``float``/``bool``/``str`` holds another type (a bool
    for a number, a string for a number, NaN or inf for a float): checked at construction, so a bad
    parameter fails before any compute, naming the parameter and the type it needs."""
    for f in fields(obj):
        kind = f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "")
        value = getattr(obj, f.name)
        if kind.endswith(" | None"):  # optional: None, or the type named
            kind = kind[: -len(" | None")] if value is not None else ""
        if kind in _KINDS and not _fits(value, kind):
            finite = " (finite)" if kind == "float" else ""
            raise ValueError(f"{owner}: {f.name} must be {_KINDS[kind]}{finite}, got {value!r}")


def check_range(owner: str, name: str, value: float, low: float | None = None, high: float | None = None,
                low_open: bool = False, high_open: bool = False, hint: str = "") -> None:
    """Raise ValueError naming the valid interval unless ``low (<|<=) value (<|<=) high``."""
    ok = (low is None or (value > low if low_open else value >= low)) and (
        high is None or (value < high if high_open else value <= high))
    if not ok:
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        interval = f"{'(' if low_open or low is None else '['}{lo}, {hi}{')' if high_open or high is None else ']'}"
        raise ValueError(f"{owner}: {name} must be in {interval}{hint}, got {value!r}")


class Registry(Generic[T]):
    def __init__(self, kind: str, base: type[T]):
        self.kind, self.base = kind, base
        self._classes: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        """Class decorator: ``@REGISTRY.register("tome")``; sets ``cls.name``."""

        def wrap(cls: type[T]) -> type[T]:
            if name in self._classes:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            cls.name = name
            self._classes[name] = cls
            return cls

        return wrap

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a plugin unloading, or a test that registered a toy)."""
        self.get(name)
        del self._classes[name]

    def names(self) -> list[str]:
        return sorted(self._classes)

    def get(self, name: str) -> type[T]:
        if name not in self._classes:
            raise ValueError(f"unknown {self.kind} {name!r}; available: {', '.join(self.names())}")
        return self._classes[name]

    def make(self, spec: str | T, **params: Any) -> T:
        """An instance from a name and keyword parameters (an instance passes through unchanged)."""
        if not isinstance(spec, str) and isinstance(spec, self.base):
            if params:
                raise ParamError(f"pass parameters either in the {self.kind} object or as keywords, not both")
            return spec
        cls = self.get(spec)
        allowed = {f.name for f in fields(cls)}
        unknown = sorted(set(params) - allowed)
        if unknown:
            raise ParamError(f"{spec}: unknown parameter(s) {unknown}; valid: {sorted(allowed)}")
        return cls(**params)
