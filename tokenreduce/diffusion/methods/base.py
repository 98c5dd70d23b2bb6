"""What every diffusion method is: a frozen dataclass registered by name, checked at construction.

A method decides, for one call of one transformer block whose tokens lie on an ``h x w`` grid,
a :class:`Plan`: how the inputs of the block's self-attention (``attn1``), cross-attention
(``attn2``) and feed-forward (``ff``) sub-modules are reduced around their own forward. The adapter
(:mod:`..adapter`) finds the blocks and the grid; methods never see diffusers.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from ...core.assign import apply_assignment, restore
from ...registry import Registry, check_field_types, check_range
from ..grid import bipartite_merge_2d, pool_grid, stride_choice

Forward = Callable[..., Tensor]


def check_stride(owner: str, stride: Any) -> tuple[int, int]:
    """``(sx, sy)``: two ints >= 1 (a list from YAML is accepted)."""
    ok = isinstance(stride, (tuple, list)) and len(stride) == 2 and all(
        isinstance(s, numbers.Integral) and not isinstance(s, bool) and s >= 1 for s in stride)
    if not ok:
        raise ValueError(f"{owner}: stride must be two ints >= 1 (sx, sy), got {stride!r}")
    return int(stride[0]), int(stride[1])


def _rows(kwargs: dict[str, Any], rows: Tensor, b: int) -> dict[str, Any]:
    """The keyword tensors of a batch of ``b`` restricted to ``rows``."""
    return {k: v[rows] if isinstance(v, Tensor) and v.dim() > 0 and v.shape[0] == b else v for k, v in kwargs.items()}


class Plan:
    """One block call's reduction; :meth:`run` wraps one sub-module's forward."""

    def run(self, which: str, forward: Forward, x: Tensor, kwargs: dict[str, Any]) -> Tensor:
        raise NotImplementedError  # pragma: no cover


class MergePlan(Plan):
    """Merge -> sub-module -> unmerge (tomesd). Rows that keep different numbers of tokens (threshold
    merging) run as separate rectangular groups, so no row ever attends to another row's padding."""

    def __init__(self, dst: Tensor, kept: Tensor | int, targets: frozenset[str]):
        """``kept``: slots per row (B,), or one int when every row keeps the same number (no host sync)."""
        self.dst, self.targets = dst, targets
        if isinstance(kept, int):
            self.groups = [(None, kept)]
            return
        counts = kept.tolist()
        self.groups = [(torch.tensor([i for i, k in enumerate(counts) if k == c], device=dst.device), c)
                       for c in sorted(set(counts))]

    def run(self, which, forward, x, kwargs):
        b, n = self.dst.shape
        if which not in self.targets or x.dim() != 3 or x.shape[:2] != (b, n):
            return forward(x, **kwargs)  # e.g. a chunked feed-forward: its chunks are not the grid
        self_attn = which == "attn1" and kwargs.get("encoder_hidden_states") is None
        if self_attn and kwargs.get("attention_mask") is not None:
            return forward(x, **kwargs)  # a self-attention mask is over the unmerged tokens
        out = None
        for rows, k in self.groups:
            whole = rows is None or len(self.groups) == 1
            dst = self.dst if whole else self.dst[rows]
            xs = x if whole else x[rows]
            merged, _ = apply_assignment(xs, torch.ones(dst.shape, device=x.device), dst, k)
            y = restore(forward(merged, **(kwargs if whole else _rows(kwargs, rows, b))), dst)
            if whole:
                return y
            if out is None:
                out = y.new_empty(b, *y.shape[1:])
            out[rows] = y
        return out


class PoolPlan(Plan):
    """ToDo: queries untouched; self-attention keys/values from the stride-pooled tokens."""

    def __init__(self, grid: tuple[int, int], stride: tuple[int, int]):
        self.grid, self.stride = grid, stride

    def run(self, which, forward, x, kwargs):
        h, w = self.grid
        if (which != "attn1" or kwargs.get("encoder_hidden_states") is not None  # attn1 is a cross-attention
                or kwargs.get("attention_mask") is not None or x.dim() != 3 or x.shape[1] != h * w):
            return forward(x, **kwargs)
        return forward(x, **{**kwargs, "encoder_hidden_states": pool_grid(x, self.grid, self.stride)})


@dataclass(frozen=True)
class BlockTokens:
    """What one transformer block costs under a method, per row: the tokens each of its parts sees
    (self-attention queries and keys/values, cross-attention queries, MLP) and the method's own
    matching MACs. :mod:`..cost` turns these into MACs with the block's layer sizes."""

    attn_q: int
    attn_kv: int
    cross_q: int
    ff: int
    match: int = 0

    @classmethod
    def full(cls, n: int) -> BlockTokens:
        return cls(n, n, n, n, 0)


@dataclass(frozen=True)
class DiffusionMethod:
    """Base: ``max_downsample`` = blocks whose grid is at most this many times coarser than the model's
    finest token grid are reduced (1: only the highest-resolution blocks, as tomesd's default)."""

    max_downsample: int = 1

    name: ClassVar[str] = ""
    families: ClassVar[tuple[str, ...]] = ("unet", "transformer")  # model families it applies to

    def __post_init__(self) -> None:
        check_field_types(self, self.name)
        check_range(self.name, "max_downsample", self.max_downsample, 1,
                    hint=" (1 = only the finest blocks; 2, 4, 8 also coarser ones)")

    def plan(self, metric: Tensor, grid: tuple[int, int], keys: Tensor, stream: int) -> Plan | None:
        """The reduction for one block call with input ``metric`` (B, h*w, C); None = leave it alone.
        ``keys`` (B,) identify each row's call (its timestep), ``stream`` the block."""
        raise NotImplementedError  # pragma: no cover

    def tokens(self, n: int, grid: tuple[int, int], dim: int, index: int, depth: int) -> BlockTokens:
        """The cost of block ``index`` (of ``depth``) with ``n`` tokens on ``grid`` and width ``dim``, for
        a block this method reaches (``max_downsample``); default: nothing reduced."""
        return BlockTokens.full(n)


REGISTRY: Registry[DiffusionMethod] = Registry("diffusion method", DiffusionMethod)


def register(name: str):
    """Class decorator: ``@register("tomesd")``."""
    return REGISTRY.register(name)


def diffusion_methods() -> list[str]:
    return REGISTRY.names()


def make_diffusion_method(method: str | DiffusionMethod, **params: Any) -> DiffusionMethod:
    return REGISTRY.make(method, **params)


@dataclass(frozen=True)
class StrideMethod(DiffusionMethod):
    """A method working on ``stride = (sx, sy)`` cells of the grid."""

    stride: tuple[int, int] = (2, 2)

    def __post_init__(self) -> None:
        object.__setattr__(self, "stride", check_stride(self.name, self.stride))
        super().__post_init__()

    @property
    def cap(self) -> float:
        """The largest ratio the stride allows: every cell keeps its destination, 1 - 1/(sx*sy)."""
        return 1.0 - 1.0 / (self.stride[0] * self.stride[1])

    def cells(self, grid: tuple[int, int]) -> tuple[int, int]:
        return grid[0] // self.stride[1], grid[1] // self.stride[0]

    def choose(self, grid: tuple[int, int], keys: Tensor, stream: int) -> Tensor:
        """Destination place in each whole stride cell, (B, h // sy, w // sx); override to inject."""
        return stride_choice(self.cells(grid), self.stride, keys, getattr(self, "seed", 0), stream)


__all__ = ["REGISTRY", "BlockTokens", "DiffusionMethod", "MergePlan", "Plan", "PoolPlan", "StrideMethod",
           "bipartite_merge_2d", "check_stride", "diffusion_methods", "make_diffusion_method", "register"]
