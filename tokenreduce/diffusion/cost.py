"""Analytic cost (MACs) of one denoising step's transformer blocks, at the token counts a method leaves.

Each diffusers ``BasicTransformerBlock`` is costed from its own layer sizes: every ``Linear`` in its
self-attention (``attn1``: queries and output projection at the query count, keys/values at the key
count), cross-attention (``attn2``: keys/values over the context), MLP (``ff``) at the tokens that part
sees; the attention products ``2 * heads * queries * keys * head_dim``; the block's per-row linears (a
DiT's adaLN timestep/label modulation, applied once per row); and the method's own matching
(:meth:`DiffusionMethod.tokens`). The tokens each part sees come from the method, so the cost is owned
by it. MACs, not FLOPs (FLOPs = 2 x MACs); elementwise work (softmax, norms, merge averages, ToDo's
pooling) is not counted, as ``FlopCounterMode`` does not count it either.

Everything outside the blocks (a U-Net's convolutions, a DiT's patch embedding and final layer) is not
touched by any method here; :func:`step_cost` covers the blocks only, and the benchmark adds the rest.
Which blocks a method reaches follows the adapter's rule (:func:`..adapter.level_grid`), and a block's
token grid follows the model's layout: a DiT/PixArt's patch grid, or a U-Net level's grid (the latent
halved, rounded up, once per downsampler above it).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from .adapter import UNETS, _named, level_grid
from .methods import BlockTokens, DiffusionMethod, make_diffusion_method


@dataclass(frozen=True)
class BlockCost:
    """One block's MACs for a whole batch, and the tokens its self-attention saw."""

    index: int
    grid: tuple[int, int]
    tokens: BlockTokens
    attn: int  # self-attention projections + products
    cross: int  # cross-attention projections + products
    mlp: int
    per_row: int  # linears applied once per row (adaLN modulation)
    reducer: int  # the method's matching

    @property
    def total(self) -> int:
        return self.attn + self.cross + self.mlp + self.per_row + self.reducer


def _linears(module: nn.Module | None) -> list[tuple[str, nn.Linear]]:
    return [] if module is None else [(n, m) for n, m in module.named_modules() if isinstance(m, nn.Linear)]


def _attention(attn: nn.Module | None, q: int, kv: int) -> int:
    """MACs per row of an ``Attention`` with ``q`` queries over ``kv`` keys/values."""
    if attn is None:
        return 0
    macs = 0
    for name, lin in _linears(attn):
        rows = kv if name.split(".")[0] in ("to_k", "to_v") else q
        macs += rows * lin.in_features * lin.out_features
    inner = attn.to_q.out_features
    return macs + 2 * q * kv * inner  # QK^T and PV: heads * head_dim = inner


def block_macs(block: nn.Module, t: BlockTokens, batch: int, context: int) -> tuple[int, int, int, int]:
    """(self-attention, cross-attention, MLP, per-row) MACs of ``block`` for ``batch`` rows seeing ``t``;
    ``context`` = tokens of the cross-attention's ``encoder_hidden_states``."""
    attn1, attn2, ff = getattr(block, "attn1", None), getattr(block, "attn2", None), getattr(block, "ff", None)
    inside = {id(m) for sub in (attn1, attn2, ff) if sub is not None for m in sub.modules()}
    per_row = sum(lin.in_features * lin.out_features for _, lin in _linears(block) if id(lin) not in inside)
    mlp = sum(t.ff * lin.in_features * lin.out_features for _, lin in _linears(ff))
    return (batch * _attention(attn1, t.attn_q, t.attn_kv), batch * _attention(attn2, t.cross_q, context),
            batch * mlp, batch * per_row)


def block_grids(model: nn.Module, size: tuple[int, int]) -> list[tuple[nn.Module, tuple[int, int], tuple[int, int]]]:
    """(block, its token grid, the model's finest grid) for every ``BasicTransformerBlock``, in the adapter's
    order, for a sample of spatial ``size`` (latent or pixel H x W)."""
    blocks = [b for b in model.modules() if _named(b, ("BasicTransformerBlock",))]
    if not _named(model, UNETS):
        p = int(model.config.patch_size)
        base = (size[0] // p, size[1] // p)
        return [(b, base, base) for b in blocks]

    def halve(grid: tuple[int, int], times: int) -> tuple[int, int]:
        h, w = grid
        for _ in range(times):
            h, w = -(-h // 2), -(-w // 2)
        return h, w

    level: dict[int, int] = {}
    down = 0
    for blk in model.down_blocks:
        for b in blk.modules():
            level.setdefault(id(b), down)
        down += bool(getattr(blk, "downsamplers", None))
    if model.mid_block is not None:
        for b in model.mid_block.modules():
            level.setdefault(id(b), down)
    up = down
    for blk in model.up_blocks:
        for b in blk.modules():
            level.setdefault(id(b), up)
        up -= bool(getattr(blk, "upsamplers", None))
    return [(b, halve(size, level[id(b)]), size) for b in blocks]


def step_cost(
    model: nn.Module, size: tuple[int, int], batch: int, method: str | DiffusionMethod | None = None,
    context: int = 0, **params,
) -> list[BlockCost]:
    """Per-block MACs of one forward of ``model`` (a U-Net or DiT/PixArt) on ``batch`` samples of spatial
    ``size``, under ``method`` (None: unreduced); ``context``: cross-attention tokens (77 for SD's text)."""
    m = make_diffusion_method(method, **params) if method is not None else None
    sites = block_grids(model, size)
    depth = len(sites)
    out = []
    for i, (block, grid, base) in enumerate(sites):
        n = grid[0] * grid[1]
        reached = m is not None and level_grid(base, n, m.max_downsample) is not None
        dim = block.attn1.to_q.in_features
        t = m.tokens(n, grid, dim, i, depth) if reached else BlockTokens.full(n)
        attn, cross, mlp, per_row = block_macs(block, t, batch, context)
        out.append(BlockCost(i, grid, t, attn, cross, mlp, per_row, batch * t.match))
    return out


def total_macs(costs: list[BlockCost]) -> int:
    return sum(c.total for c in costs)


__all__ = ["BlockCost", "block_grids", "block_macs", "step_cost", "total_macs"]
