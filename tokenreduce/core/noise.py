"""Seeded noise that depends only on (seed, stream, position): the one random scheme of every family.

A pure integer hash of the token's position, so a row's random baseline (encoder random pruning,
the random KV press, Keyformer's Gumbel noise, random visual tokens) never depends on what else is
in the batch, on padding, on the device, or on a global generator.
"""

from __future__ import annotations

import torch
from torch import Tensor


def hash_uniform(positions: Tensor, seed: int, stream: int) -> Tensor:
    """Deterministic pseudo-random numbers in [0, 1) (float32, 24 bits) from (seed, stream, position).

    ``stream`` separates independent draws with the same seed (e.g. one per layer)."""
    x = (positions.to(torch.int64) * 0x9E3779B1 + (seed * 0x85EBCA77 + stream * 0xC2B2AE3D)) & 0xFFFFFFFF
    x = (x ^ (x >> 15)) * 0x2C1B3C6D & 0xFFFFFFFF
    x = (x ^ (x >> 12)) * 0x297A2D39 & 0xFFFFFFFF
    x = x ^ (x >> 15)
    return (x & 0xFFFFFF).to(torch.float32) / float(1 << 24)


def ranked_noise(rank: Tensor, shape: tuple[int, ...], seed: int, stream: int) -> Tensor:
    """Noise (B, *shape, N) for tokens of rank ``rank`` (B, N) (e.g. the index among a row's real
    tokens), an independent draw per cell of ``shape`` (e.g. heads x queries)."""
    cells = 1
    for s in shape:
        cells *= s
    cell = torch.arange(cells, device=rank.device).view(*shape, 1)
    pos = rank.view(rank.shape[0], *([1] * len(shape)), rank.shape[-1]).to(torch.int64) * cells + cell
    return hash_uniform(pos, seed, stream)


def random_subset(n: int, k: int, seed: int, stream: int = 0, device=None) -> Tensor:
    """``k`` of ``range(n)`` chosen at random, sorted (the same subset for every call with these arguments)."""
    u = hash_uniform(torch.arange(n, device=device), seed, stream)
    return u.topk(k).indices.sort().values
