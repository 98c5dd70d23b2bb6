"""One small registry type for everything selected by name: encoder methods, KV presses, prompt and VLM methods.

Each package owns its own ``Registry`` instance (no shared global table); entries are frozen
dataclasses, so ``make`` can validate parameter names before any compute.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ParamError(TypeError, ValueError):
    """Unknown parameter names (a TypeError like a bad keyword, and a ValueError like bad input)."""


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
