"""Asymmetric integer quantization of KV entries in groups along the head dimension (pure tensor functions).

Each entry's D channels are split into groups of ``group``; a group stores ``bits``-bit codes
``round((x - zero) / scale)`` with its own float16 ``scale`` and ``zero`` (= the group minimum), so a
token's error does not depend on any other token (per-token groups keep batch rows independent).
4-bit codes are packed two per byte, so the stored bytes really shrink: per entry
``D * bits / 8`` bytes of codes + ``2 * (D / group) * 2`` bytes of float16 parameters.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

BITS = (4, 8)
PARAM_DTYPE = torch.float16


@dataclass(frozen=True)
class QTensor:
    """Codes (..., D * bits / 8) uint8 and per-group ``scale``/``zero`` (..., D / group) of a quantized tensor."""

    codes: Tensor
    scale: Tensor
    zero: Tensor
    bits: int
    group: int

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.codes, self.scale, self.zero))


def check(bits: int, group: int, dim: int | None = None) -> None:
    """Raise ValueError for unsupported ``bits``/``group`` (and a head dimension ``dim`` the groups do not divide)."""
    if bits not in BITS:
        raise ValueError(f"bits must be one of {BITS}, got {bits!r}")
    if not isinstance(group, int) or group < 2 or group % 2:
        raise ValueError(f"group must be an even int >= 2, got {group!r}")
    if dim is not None and dim % group:
        raise ValueError(f"group {group} does not divide the head dimension {dim}")


def pack4(codes: Tensor) -> Tensor:
    """(..., 2k) uint8 codes < 16 -> (..., k) bytes: even channels in the low nibble, odd ones in the high nibble."""
    return codes[..., 0::2] | (codes[..., 1::2] << 4)


def unpack4(packed: Tensor) -> Tensor:
    """Inverse of :func:`pack4`."""
    return torch.stack([packed & 0x0F, packed >> 4], dim=-1).flatten(-2)


def quantize(x: Tensor, bits: int, group: int) -> QTensor:
    """Quantize ``x`` (..., D) with one (scale, zero) per ``group`` consecutive channels."""
    check(bits, group, x.shape[-1])
    qmax = (1 << bits) - 1
    g = x.float().unflatten(-1, (-1, group))  # (..., D/group, group)
    lo, hi = g.amin(-1), g.amax(-1)
    zero = lo.to(PARAM_DTYPE)
    scale = ((hi - lo) / qmax).to(PARAM_DTYPE)
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))  # constant group: every code is 0
    codes = ((g - zero.float()[..., None]) / scale.float()[..., None]).round_().clamp_(0, qmax).to(torch.uint8)
    codes = codes.flatten(-2)
    return QTensor(pack4(codes) if bits == 4 else codes, scale, zero, bits, group)


def dequantize(q: QTensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The (..., D) tensor a :class:`QTensor` stands for."""
    codes = unpack4(q.codes) if q.bits == 4 else q.codes
    g = codes.unflatten(-1, (-1, q.group)).float()
    return (g * q.scale.float()[..., None] + q.zero.float()[..., None]).flatten(-2).to(dtype)


def dequantize_into(q: QTensor, out: Tensor) -> Tensor:
    """Write :func:`dequantize` of ``q`` into ``out`` (..., D) float32 in place (the same float32 values: codes
    times scale, then plus zero) without temporaries of ``out``'s size; ``out`` may be a view. Returns ``out``."""
    if out.dtype != torch.float32:
        raise TypeError(f"dequantize_into writes float32, got {out.dtype}")
    if q.bits == 4:
        out[..., 0::2] = q.codes & 0x0F
        out[..., 1::2] = q.codes >> 4
    else:
        out.copy_(q.codes)
    g = out.unflatten(-1, (-1, q.group))
    g.mul_(q.scale.float()[..., None]).add_(q.zero.float()[..., None])
    return out


def channel_scale(x: Tensor, valid: Tensor | None = None) -> Tensor:
    """Per-channel divisors (..., 1, D) for ``x`` (..., N, D): sqrt of each channel's largest magnitude
    over the entries marked ``valid`` (..., N) (all if None), stored in float16.

    ZipCache's channel-separable key quantization: keys have a few outlier channels, so dividing each
    channel by this before per-token quantization stops one channel from setting every group's range.
    """
    a = x.float().abs()
    if valid is not None:
        a = a.masked_fill(~valid[..., None], 0.0)
    return a.amax(dim=-2, keepdim=True).sqrt().clamp(min=1e-3).to(PARAM_DTYPE)
