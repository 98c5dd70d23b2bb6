"""Analytic cost (MACs) of an encoder forward at each layer's real token count.

Counts multiply-accumulates (MACs) of every matmul in the transformer blocks: Q/K/V and output
projections, the two attention products (N² terms), the MLP, and the reducer's own scoring or
matching matmuls. FLOPs = 2 × MACs (papers' "GFLOPs" are usually MACs). Elementwise work
(softmax, norms, merging averages) is not counted; embeddings and heads are outside the blocks.
Batches are rectangular, so a layer costs ``B × width`` where ``width`` is the widest row after
reduction: padding is paid for, as it is on the hardware.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from ..core.dims import ModelDims
from .methods.base import Method
from .methods.diffrate import DiffRate


@dataclass(frozen=True)
class LayerCost:
    n_in: int  # tokens entering attention (per row, the batch width)
    n_out: int  # tokens entering the MLP
    attn_proj: int  # MACs, whole batch
    attn_core: int
    mlp: int
    reducer: int

    @property
    def total(self) -> int:
        return self.attn_proj + self.attn_core + self.mlp + self.reducer


@dataclass(frozen=True)
class RelativePositionCost:
    """Disentangled relative-position attention (DeBERTa-v2/v3), per layer: ``projections`` projections of the
    relative embedding table (``positions`` rows, once per layer whatever the batch) and, for each of ``terms``
    (content-to-position, position-to-content), every query or key times every position embedding."""

    positions: int  # rows of the relative embedding table used (2 x span)
    projections: int  # position key/query projections computed per layer
    terms: int  # c2p and/or p2c

    def macs(self, dims: ModelDims, batch: int, n: int) -> int:
        inner = dims.heads * dims.head_dim
        return self.projections * self.positions * dims.hidden * inner + batch * self.terms * n * self.positions * inner


def pinned_layout(
    lengths: Tensor, pinned: Tensor, num_layers: int, method: Method | None, protected: int
) -> tuple[Tensor, int]:
    """Row lengths and protected count of a ``pin="first_segment"`` batch as the blocks see it.

    ``pinned``: each row's first-segment length (a prefix; the leading ``protected`` tokens count as
    pinned). When the patch reduces anything, each row's pinned tokens move to the front, padded to the
    batch's longest, ``P``, and those ``P`` slots are protected: a row is then ``P`` plus its unpinned
    tokens, so the batch can be wider than it came. When it reduces nothing the batch is left as it is.
    """
    lengths = lengths.to(torch.int64)
    if method is None:
        return lengths, protected
    unprotected = lengths - lengths.clamp(max=protected)
    if not bool((method.budget().removals(unprotected, num_layers, cap=method.cap) > 0).any()):
        return lengths, protected
    pins = torch.maximum(pinned.to(torch.int64), lengths.clamp(max=protected)).minimum(lengths)
    p = int(pins.max())
    return p + lengths - pins, p


def layer_widths(
    lengths: Tensor,
    num_layers: int,
    method: Method | None = None,
    protected: int = 1,
    pinned: Tensor | None = None,
) -> list[tuple[int, int]]:
    """(width entering attention, width entering MLP) per layer for rows of ``lengths`` real tokens.

    Mirrors the runner: a layer that removes nothing keeps the width; a reducing layer compacts
    every row to ``protected + remaining`` and the batch to its widest row. ``pinned``: each row's
    pinned first-segment length under ``pin="first_segment"`` (see :func:`pinned_layout`).
    """
    lengths = lengths.to(torch.int64)
    if pinned is not None:
        lengths, protected = pinned_layout(lengths, pinned, num_layers, method, protected)
    width = int(lengths.max())
    if method is None:
        return [(width, width)] * num_layers
    prot = lengths.clamp(max=protected)
    cur = lengths - prot
    r = method.budget().removals(cur, num_layers, cap=method.cap)
    out = []
    for i in range(num_layers):
        n_in = width
        if bool((r[i] > 0).any()):
            cur = cur - r[i]
            width = int((prot + cur).max())
        out.append((n_in, width))
    return out


def encoder_cost(
    dims: ModelDims,
    lengths: Tensor,
    method: Method | None = None,
    protected: int = 1,
    widths: list[tuple[int, int]] | None = None,
    relative: RelativePositionCost | None = None,
    pinned: Tensor | None = None,
) -> list[LayerCost]:
    """Per-layer MACs of one batch (rows of ``lengths`` real tokens) through the blocks.

    ``widths`` overrides the schedule's (width entering attention, width entering MLP) per layer
    with measured ones: adaptive methods (ATS) keep a data-dependent number of tokens, and their
    schedule only bounds it. ``relative`` adds a family's relative-position matmuls to the attention core
    (``HFDebertaV2.relative_cost(model)``). ``pinned``: each row's first-segment length for a model patched
    with ``pin="first_segment"`` (the blocks then see :func:`pinned_layout`'s rows and protected count).
    """
    b = int(lengths.shape[0])
    if pinned is not None:
        lengths, protected = pinned_layout(lengths, pinned, dims.layers, method, protected)
    inner = dims.heads * dims.head_dim
    costs = []
    r = (
        method.budget().removals((lengths - lengths.clamp(max=protected)).to(torch.int64), dims.layers, cap=method.cap)
        if method is not None
        else None
    )
    for i, (n_in, n_out) in enumerate(widths or layer_widths(lengths, dims.layers, method, protected)):
        reducing = r is not None and bool((r[i] > 0).any())
        costs.append(
            LayerCost(
                n_in=n_in,
                n_out=n_out,
                attn_proj=b * (3 * n_in * dims.hidden * inner + n_in * inner * dims.hidden),
                attn_core=b * 2 * dims.heads * n_in * n_in * dims.head_dim
                + (relative.macs(dims, b, n_in) if relative else 0),
                mlp=b * dims.ffn_matrices * n_out * dims.hidden * dims.ffn,
                reducer=b * method.cost_macs(n_in, dims, protected) if reducing else 0,
            )
        )
    return costs


def total_macs(costs: list[LayerCost]) -> int:
    return sum(c.total for c in costs)


class FlopsSchedule(NamedTuple):
    """A DiffRate schedule meeting a FLOP target: ``tokenreduce.patch(model, "diffrate", prune=..., merge=...)``."""

    prune: tuple[int, ...]
    merge: tuple[int, ...]
    flops_ratio: float  # achieved MACs / unreduced MACs (blocks only, reducer cost included)


def schedule_for_flops(
    dims: ModelDims,
    n_tokens: int,
    flops_ratio: float,
    protected: int = 1,
    prune_share: float = 0.5,
    shape: str = "decreasing",
) -> FlopsSchedule:
    """Per-layer prune/merge counts whose analytic MACs come closest to ``flops_ratio`` of the
    unreduced blocks, for rows of ``n_tokens`` tokens (``protected`` of them kept).

    Searches the total number of removed tokens (spread over layers by ``shape``, split into pruning
    and merging by ``prune_share``); the cost falls as the total grows, so a binary search finds
    the closest total (tests check the result, not just the assumption). One more removed token
    changes the cost by about one token's share (≈ 1 / (n_tokens − protected)), which bounds the
    error whenever the target is reachable.
    """
    n0 = n_tokens - protected
    if n0 < 1 or not 0.0 < flops_ratio <= 1.0:
        raise ValueError(f"need an unprotected token and flops_ratio in (0, 1], got {n_tokens}, {flops_ratio}")
    lengths = torch.tensor([n_tokens])
    base = total_macs(encoder_cost(dims, lengths))

    def build(total: int) -> FlopsSchedule:
        r = DiffRate(keep=(n0 - total) / n0 if total < n0 else 1e-9, schedule=shape).budget()
        rem = r.removals(torch.tensor([n0]), dims.layers, cap=DiffRate.cap)[:, 0].tolist()
        prune = tuple(int(v * prune_share) for v in rem)
        merge = tuple(v - p for v, p in zip(rem, prune))
        ratio = total_macs(encoder_cost(dims, lengths, DiffRate(prune=prune, merge=merge), protected)) / base
        return FlopsSchedule(prune, merge, ratio)

    lo, hi = 0, n0  # ratio(total) decreases with total
    floor = build(hi)
    if flops_ratio < floor.flops_ratio:
        raise ValueError(f"flops_ratio {flops_ratio} is below the reachable minimum {floor.flops_ratio:.3f}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if build(mid).flops_ratio >= flops_ratio:
            lo = mid
        else:
            hi = mid
    return min((build(lo), build(hi)), key=lambda s: abs(s.flops_ratio - flops_ratio))
