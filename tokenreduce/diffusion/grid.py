"""Token reductions on a 2-D latent grid, as pure tensor functions (no diffusers here).

* :func:`stride_choice` / :func:`destinations`: one destination token per ``sy x sx`` stride cell,
  its place in the cell drawn from the core's seeded noise (:mod:`tokenreduce.core.noise`), keyed per
  row, so a row's choice never depends on the rest of its batch. The choice is a plain tensor, so a
  caller (or a test) can inject any other choice, e.g. the one the PyPI ``tomesd`` package draws.
* :func:`bipartite_merge_2d`: ToMe's bipartite soft matching with those destinations as set B and
  every other token as set A (Bolya & Hoffman, "Token Merging for Fast Stable Diffusion", CVPRW 2023,
  arXiv:2303.17604). It returns an assignment map; merging and unmerging are the core's
  ``apply_assignment`` (mean per slot) and ``restore`` (each token takes its slot's value).
* :func:`pool_grid`: average pooling over stride cells (ToDo's key/value downsampling).

Tokens are row-major over an ``h x w`` grid, as diffusers flattens ``(B, C, H, W)`` feature maps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.assign import compact, stable_order
from ..core.noise import hash_uniform


def stride_choice(cells: tuple[int, int], stride: tuple[int, int], keys: Tensor, seed: int, stream: int) -> Tensor:
    """Index in ``[0, sx*sy)`` (``dy * sx + dx``) of each cell's destination: (B, h // sy, w // sx).

    ``keys`` (B,) int64 identifies each row's call (the adapter passes the row's timestep), ``stream``
    the block; rows with equal keys get equal choices, whatever else is in the batch."""
    hsy, wsx = cells
    sx, sy = stride
    pos = torch.arange(hsy * wsx, device=keys.device)[None]
    streams = (keys.to(torch.int64)[:, None] * 1_000_003 + stream) & 0x7FFFFFFF
    u = hash_uniform(pos, seed, streams)  # (B, cells), depends only on (seed, key, block, cell)
    return (u * (sx * sy)).long().clamp_(max=sx * sy - 1).view(-1, hsy, wsx)


def destinations(grid: tuple[int, int], stride: tuple[int, int], choice: Tensor) -> Tensor:
    """(B, h*w) bool: the chosen token of every whole stride cell. Tokens of a partial cell at the
    bottom or right edge (``h`` or ``w`` not divisible by the stride) are never destinations."""
    h, w = grid
    sx, sy = stride
    b, hsy, wsx = choice.shape
    dev = choice.device
    rows = torch.arange(hsy, device=dev)[:, None] * sy + choice // sx
    cols = torch.arange(wsx, device=dev)[None, :] * sx + choice % sx
    flat = (rows * w + cols).reshape(b, -1)
    return torch.zeros(b, h * w, dtype=torch.bool, device=dev).scatter_(1, flat, True)


def bipartite_merge_2d(
    metric: Tensor, grid: tuple[int, int], stride: tuple[int, int], r: int, choice: Tensor,
    threshold: float | None = None,
) -> tuple[Tensor, Tensor]:
    """Plan ToMe-for-SD merging of ``r`` tokens per row; returns ``(dst, kept)``.

    metric: (B, N, C) features (N = h*w) compared by cosine similarity; choice: (B or 1, h//sy, w//sx)
    from :func:`stride_choice` (or injected). Every source token (not a destination) proposes its most
    similar destination; the ``r`` best proposals merge (ties: earlier source first). With
    ``threshold``, only proposals whose cosine exceeds it merge (so rows may merge fewer).
    dst: (B, N) output slot of every token, kept tokens in their original order (a merged token takes
    its destination's slot); kept: (B,) slots per row. Rows with the same ``kept`` form a rectangular
    batch: ``apply_assignment(x[rows], ones, dst[rows], kept)``. Without a threshold every row keeps
    ``N - r`` and no tensor value is read on the host (no device sync).
    """
    b, n, c = metric.shape
    is_dst = destinations(grid, stride, choice).expand(b, n)
    n_dst = (grid[0] // stride[1]) * (grid[1] // stride[0])
    n_src = n - n_dst
    r = max(0, min(int(r), n_src))
    order = stable_order(is_dst.to(torch.uint8), descending=False)  # sources then destinations, by position
    a_idx, b_idx = order[:, :n_src], order[:, n_src:]
    m = metric / metric.norm(dim=-1, keepdim=True).clamp(min=1e-12)
    a = m.gather(1, a_idx[..., None].expand(b, n_src, c))
    bm = m.gather(1, b_idx[..., None].expand(b, n_dst, c))
    best, best_b = (a @ bm.transpose(1, 2)).max(-1)  # (B, n_src): each source's best destination
    rank = torch.empty_like(a_idx).scatter_(
        1, stable_order(best, descending=True), torch.arange(n_src, device=m.device).expand(b, n_src))
    merged = rank < r
    if threshold is not None:
        merged &= best > threshold
    keep = torch.ones(b, n, dtype=torch.bool, device=m.device).scatter_(1, a_idx, ~merged)
    slot, _ = compact(keep, torch.ones_like(keep), n - r if threshold is None else None)
    partner_slot = slot.gather(1, b_idx.gather(1, best_b))
    slot = slot.scatter(1, a_idx, torch.where(merged, partner_slot, slot.gather(1, a_idx)))
    return slot, keep.sum(1)


def pool_grid(x: Tensor, grid: tuple[int, int], stride: tuple[int, int]) -> Tensor:
    """(B, h*w, C) -> (B, ceil(h/sy) * ceil(w/sx), C): the mean of each stride cell (a partial cell at an
    edge averages the tokens it has)."""
    b, n, c = x.shape
    h, w = grid
    sx, sy = stride
    img = x.transpose(1, 2).reshape(b, c, h, w)
    pooled = F.avg_pool2d(img, kernel_size=(sy, sx), stride=(sy, sx), ceil_mode=True)
    return pooled.flatten(2).transpose(1, 2)
