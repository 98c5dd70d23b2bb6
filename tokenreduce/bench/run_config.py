"""One point of a benchmark: a method name, its parameters and the label tables and plots show it by.

Shared by the encoder benches (:mod:`.text_bench`, whose labels list parameters sorted by name, as the
sweep's points do) and the diffusion bench (:mod:`tokenreduce.diffusion.bench`, whose labels keep the
order the parameters were given in, as its tables always have).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass(frozen=True)
class RunConfig:
    """One configuration (``method=None`` is the unreduced baseline); ``label``: ``method(k=v, ...)``."""

    method: str | None
    params: dict[str, Any] = field(default_factory=dict)
    sort_params: ClassVar[bool] = True  # the label lists parameters by name; a subclass may keep their order

    @property
    def label(self) -> str:
        if self.method is None:
            return "none"
        items = sorted(self.params.items()) if self.sort_params else self.params.items()
        return self.method + "(" + ", ".join(f"{k}={v}" for k, v in items) + ")"
