"""Per-layer reduction budgets, computed per sequence from its own length (pure, no state).

A schedule turns a row's count of real unprotected tokens ``n0`` into how many tokens each layer
removes. Computing it per row from that row alone is what makes results independent of batch
composition and padding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

SHAPES = ("constant", "decreasing")


@dataclass(frozen=True)
class Schedule:
    """How many tokens to remove at each layer.

    Exactly one of:
      * ``r``: an int removed at every reducing layer (ToMe's constant r), or a per-layer list;
      * ``keep``: fraction of unprotected tokens left after the last reducing layer, spread over
        the reducing layers evenly (``shape="constant"``) or front-loaded (``"decreasing"``,
        removal at layer i proportional to the number of layers left, as in ToMe's decreasing
        schedule).
    ``layers`` restricts reduction to these layer indices (default: all).
    ``min_tokens``: a row is never reduced below this many unprotected tokens (short sequences,
    where there is little to save, are left alone or reduced less).
    A layer never removes more than ``cap`` of its current tokens (0.5 for bipartite merging);
    what a capped layer could not remove is carried to the next reducing layer.
    """

    r: int | tuple[int, ...] | None = None
    keep: float | None = None
    shape: str = "constant"
    layers: tuple[int, ...] | None = None
    min_tokens: int = 0

    def __post_init__(self) -> None:
        if (self.r is None) == (self.keep is None):
            raise ValueError("give exactly one of r (tokens removed per layer) or keep (fraction kept, in (0, 1])")
        if self.keep is not None and not 0.0 < float(self.keep) <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {self.keep}")
        rs = self.r if isinstance(self.r, (tuple, list)) else (() if self.r is None else (self.r,))
        if any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in rs):
            raise ValueError(f"r must be a non-negative int or a list of them, got {self.r!r}")
        if self.shape not in SHAPES:
            raise ValueError(f"schedule shape must be one of {SHAPES}, got {self.shape!r}")
        if isinstance(self.min_tokens, bool) or not isinstance(self.min_tokens, int) or self.min_tokens < 0:
            raise ValueError(f"min_tokens must be a non-negative int, got {self.min_tokens!r}")
        if self.layers is not None and any(int(i) < 0 for i in self.layers):
            raise ValueError(f"layers must be non-negative indices, got {self.layers}")

    def check(self, num_layers: int) -> None:
        """Validate against a model's depth (before any compute)."""
        if isinstance(self.r, tuple) and len(self.r) != num_layers:
            raise ValueError(f"per-layer r has {len(self.r)} entries but the model has {num_layers} layers")
        if self.layers is not None and any(i >= num_layers for i in self.layers):
            raise ValueError(f"layers {self.layers} out of range for a model with {num_layers} layers")

    def is_identity(self) -> bool:
        """True when nothing is ever removed (r=0 or keep=1)."""
        if self.keep is not None:
            return float(self.keep) == 1.0
        return not any((self.r,) if isinstance(self.r, int) else self.r)

    def _active(self, num_layers: int) -> list[int]:
        return list(range(num_layers)) if self.layers is None else sorted(set(self.layers))

    def removals(self, n0: Tensor, num_layers: int, cap: float = 0.5) -> Tensor:
        """Tokens removed per layer and row, shape (num_layers, B), for rows of ``n0`` tokens."""
        return per_row(self.removals_static, n0, num_layers, cap)

    def removals_static(self, n0: int, num_layers: int, cap: float = 0.5) -> list[int]:
        """Tokens removed per layer for one row of ``n0`` tokens, in plain Python: the runner calls it
        with the length read off the input's shape, so a compiled or exported graph has static shapes."""
        active = self._active(num_layers)
        out = [0] * num_layers
        w = [1.0] * len(active) if self.shape == "constant" else [float(len(active) - i) for i in range(len(active))]
        total = n0 - round(n0 * float(self.keep)) if self.keep is not None else 0
        floor = min(n0, self.min_tokens)
        cur, removed, acc = n0, 0, 0.0
        for j, layer in enumerate(active):
            if self.keep is not None:
                acc += w[j]
                want = round(total * (acc / sum(w))) - removed
            else:
                want = self.r if isinstance(self.r, int) else self.r[layer]
            r = max(0, min(want, math.floor(cur * cap), cur - floor))
            out[layer] = r
            cur, removed = cur - r, removed + r
        return out


def per_row(rule: Callable[[int, int, float], list[int]], n0: Tensor, num_layers: int, cap: float) -> Tensor:
    """(num_layers, B) removals from a schedule's per-row rule, applied to each row's own length (so a
    row's budget never depends on the rest of the batch)."""
    rows = [rule(int(n), num_layers, cap) for n in n0.tolist()]
    return torch.tensor(rows, dtype=torch.int64, device=n0.device).reshape(len(rows), num_layers).T.contiguous()


def schedule_from(
    r: int | Sequence[int] | None,
    keep: float | None,
    shape: str,
    layers: Sequence[int] | None,
    min_tokens: int = 0,
) -> Schedule:
    """Build a :class:`Schedule` from user-facing keyword arguments."""
    r_val = tuple(int(v) for v in r) if isinstance(r, (list, tuple)) else r
    lay = tuple(layers) if layers is not None else None
    return Schedule(r=r_val, keep=keep, shape=shape, layers=lay, min_tokens=min_tokens)
