"""Method base class and the registry of methods by name.

A method is a small frozen dataclass: a schedule (how many tokens each layer removes) plus a
``plan`` that turns one layer's tensors into a token assignment. It holds no runtime state, so
one method object can serve many models and threads at once.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple

from torch import Tensor

from ...core.dims import ModelDims
from ...core.schedule import SHAPES, Schedule, per_row, schedule_from
from ...registry import Registry, check_field_types


class LayerTensors(NamedTuple):
    """What a reducer may look at in one layer (between attention and MLP)."""

    x: Tensor  # (B, N, C) hidden states after the attention sub-layer
    sizes: Tensor  # (B, N) tokens merged into each slot; 0 marks padding
    keys: Tensor | None  # (B, N, Ck) attention keys averaged over heads, if the method asked for them
    cls_attn: Tensor | None  # (B, N) attention of the first token, averaged over heads, if asked for
    layer: int
    protected: int  # leading tokens that must be kept
    # optional extras, filled only for methods whose ``needs`` name them
    cls_attn_heads: Tensor | None = None  # (B, H, N) attention row of the first token, per head
    values: Tensor | None = None  # (B, H, N, d) attention values
    attn: Tensor | None = None  # (B, H, N, N) full attention probabilities (costs an extra Q·Kᵀ)
    target: Tensor | None = None  # (B,) unprotected tokens the schedule leaves after this layer
    num_layers: int = 0  # depth of the patched stack
    n_out: int | None = None  # when known in Python (no padding, same budget per row): the required
    # output length; pass it to the core so no tensor value is read (torch.compile / ONNX export)
    queries: Tensor | None = None  # (B, H, N, d) attention queries per head, if the method needs "qk"
    keys_heads: Tensor | None = None  # (B, H, N, d) attention keys per head, with "qk"
    scaling: float = 1.0  # the attention's logit scale, with "qk"
    key_bias: Tensor | None = None  # (B, N) log(size) per key under proportional attention, with "qk"
    attn_stat: Tensor | None = None  # (B, H, N) the method's ``attention_stat`` of this layer, with "attn_stat"


class Plan(NamedTuple):
    """A token assignment for :func:`tokenreduce.core.assign.apply_assignment`."""

    dst: Tensor  # (B, N) output slot per token, -1 = dropped
    n_out: int
    weights: Tensor | None = None  # averaging weights (default: sizes)
    one_to_one: bool = False  # no slot is shared: apply by gather, bit-exact


@dataclass(frozen=True)
class Method:
    """Shared budget parameters: ``r`` tokens per layer, or ``keep`` fraction; see :class:`Schedule`."""

    r: int | tuple[int, ...] | None = None
    keep: float | None = None
    schedule: str = "constant"
    layers: tuple[int, ...] | None = None
    protected: int | None = None  # None: the adapter's default ([CLS] and any register tokens)
    min_tokens: int = 0  # never reduce a row below this many unprotected tokens
    min_step: float = 0.0  # a reducing layer removes at least this fraction of the row (see MinStep)

    name: ClassVar[str] = ""
    needs: ClassVar[frozenset[str]] = frozenset()  # subset of NEEDS (runner.py)
    cap: ClassVar[float] = 0.5  # most of a layer's tokens one step may remove
    proportional_attention: ClassVar[bool] = False
    drops: ClassVar[bool] = False  # some tokens leave without being merged anywhere

    def __post_init__(self) -> None:
        check_field_types(self, self.name)
        if self.r is None and self.keep is None:
            raise ValueError(f"{self.name}: give r (tokens removed per layer) or keep (fraction kept, in (0, 1])")
        if self.schedule not in SHAPES:
            raise ValueError(f"{self.name}: schedule must be one of {SHAPES}, got {self.schedule!r}")
        if self.protected is not None and (not isinstance(self.protected, int) or self.protected < 0):
            raise ValueError(f"{self.name}: protected must be a non-negative int, got {self.protected!r}")
        if not 0.0 <= float(self.min_step) < 1.0:
            raise ValueError(f"{self.name}: min_step (least fraction of a row one reducing layer removes) must be "
                             f"in [0, 1), got {self.min_step}")
        self.budget()  # validates r / keep / layers

    def budget(self) -> Schedule | MinStep:
        base = schedule_from(self.r, self.keep, self.schedule, self.layers, self.min_tokens)
        return MinStep(base, float(self.min_step)) if self.min_step else base

    def attention_stat(self) -> Callable[[Tensor, Tensor], Tensor] | None:
        """For methods that need "attn_stat": a per-head statistic ``stat(probs, valid)`` (b, h, N) of a
        block of attention probabilities (b, h, N, N) whose rows' real tokens are ``valid`` (b, N).
        The runner gets it from the block's own attention where the backend allows (no second Q·Kᵀ),
        otherwise from a blockwise recomputation; it arrives as ``LayerTensors.attn_stat``."""
        return None

    def plan(self, t: LayerTensors, n_remove: Tensor) -> Plan:  # pragma: no cover - abstract
        raise NotImplementedError

    def cost_macs(self, n: int, dims: ModelDims, protected: int) -> int:
        """Multiply-accumulates of this method's own scoring/matching (matmuls only) for one row of
        ``n`` tokens, as executed: the analytic FLOP counter adds it at every reducing layer."""
        return 0


@dataclass(frozen=True)
class MinStep:
    """A schedule whose reducing layers each remove at least ``ceil(min_step · n0)`` tokens.

    A reducing layer has a fixed overhead (scoring, matching, gathering, a float attention mask
    afterwards) that removing 1-2 % of the tokens does not repay (ToMe and EViT at keep 0.9 ran at
    0.97-0.99x). Steps smaller than the threshold are taken early instead: a layer whose share is
    below it removes the threshold (at most what the whole schedule removes, and within the cap),
    and the layers after it skip until their cumulative share is reached again. The total removed,
    and hence the final token count, is the base schedule's.
    """

    base: Schedule
    min_step: float

    def check(self, num_layers: int) -> None:
        self.base.check(num_layers)

    def is_identity(self) -> bool:
        return self.base.is_identity()

    def removals(self, n0: Tensor, num_layers: int, cap: float = 0.5) -> Tensor:
        return per_row(self.removals_static, n0, num_layers, cap)

    def removals_static(self, n0: int, num_layers: int, cap: float = 0.5) -> list[int]:
        plan = self.base.removals_static(n0, num_layers, cap)
        total, least = sum(plan), math.ceil(self.min_step * n0)
        out, due, removed, cur = [], 0, 0, n0
        for r in plan:
            due += r
            want = due - removed
            step = 0 if want <= 0 else max(0, min(max(want, least), total - removed, math.floor(cur * cap)))
            out.append(step)
            removed, cur = removed + step, cur - step
        return out


def register(name: str) -> Callable[[type[Method]], type[Method]]:
    """Class decorator: make a method available as ``tokenreduce.patch(model, name, ...)``."""
    return REGISTRY.register(name)


def methods() -> list[str]:
    """Names of all registered methods."""
    return REGISTRY.names()


def make_method(method: str | Method, **params: Any) -> Method:
    """A method instance from a name and keyword parameters, validated before any compute."""
    if isinstance(params.get("r"), list):
        params["r"] = tuple(params["r"])
    if isinstance(params.get("layers"), list):
        params["layers"] = tuple(params["layers"])
    return REGISTRY.make(method, **params)


REGISTRY: Registry[Method] = Registry("method", Method)
