"""Per-forward and per-cache bookkeeping for visual-token reduction (no module-level mutable state).

``Forward`` lives in a ContextVar for the duration of one prefill, so a patched model is reentrant
across threads. Which original token each layer's cache entries stand for is the shared
:class:`tokenreduce.core.provenance.Provenance` map on the cache (the record KV presses compose with),
so decode-time masks and positions can be mapped onto a shortened cache; :func:`get_state` reads it.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.provenance import layer_maps
from .families.base import Image


@dataclass
class Forward:
    images: list[list[Image]]  # per row
    cls: list[Tensor] = field(default_factory=list)  # per vision batch: (B_img, N) [CLS] attention
    attn_in: dict[int, tuple[Tensor, Tensor, Tensor]] = field(default_factory=dict)  # layer -> (hidden, cos, sin)
    kept: Tensor | None = None  # (B, N_cur) original index of each current token; None = all
    masked: Tensor | None = None  # (B, N) original tokens no later query sees (dropped by some rows only)
    visual: Tensor | None = None  # (B, N) visual flags of the original sequence
    valid: Tensor | None = None  # (B, N) 2D validity mask of the original sequence
    n: int = 0


CURRENT: ContextVar[Forward | None] = ContextVar("tokenreduce_vlm_forward", default=None)
# Score rows of the vision blocks a method reads, recorded while the tower runs; the tower's post-hook combines
# them and puts the result on the prefill, or on the tower's output object when ``generate`` encodes the images
# first (it hands that object back to the prefill).
ROWS: ContextVar[list[Tensor] | None] = ContextVar("tokenreduce_vlm_vision_rows", default=None)
CLS_ATTR = "_tokenreduce_cls"


@dataclass(frozen=True)
class CacheState:
    """A read-only view of the cache's provenance maps, as the VLM tests and tools look at them."""

    cols: list[Tensor]  # per layer (B, L_l): original token index of each mapped entry (-1: kept per KV head)
    seen: int  # original tokens the mapped entries stand for


def get_state(cache) -> CacheState | None:
    """Every layer's mapped original indices, or None if no layer's cache was shortened or mapped."""
    maps = layer_maps(cache)
    if not maps:
        return None
    return CacheState([maps[i].index for i in sorted(maps)], maps[min(maps)].seen)


def gather_tokens(x: Tensor, kept: Tensor, dim: int = 1) -> Tensor:
    """``x`` with ``dim`` (the token axis) indexed per row by ``kept`` (B, K); broadcasts a batch of 1."""
    b = kept.shape[0]
    if x.shape[0] != b:
        x = x.expand(b, *x.shape[1:])
    shape = [1] * x.ndim
    shape[0], shape[dim] = b, kept.shape[1]
    idx = kept.view(shape).expand(*[kept.shape[1] if d == dim else s for d, s in enumerate(x.shape)])
    return x.gather(dim, idx)


def gather_mask(mask: Tensor | None, kept: Tensor) -> Tensor | None:
    """A 4-D attention mask (B, 1, N, N) restricted to the kept rows and columns."""
    if mask is None:
        return None
    return gather_tokens(gather_tokens(mask, kept, 2), kept, 3)


def decode_mask(entries: Tensor, q: int, dtype: torch.dtype) -> Tensor:
    """Additive mask (B, 1, q, E + q) for ``q`` new tokens over E cached entries, from the 2D mask
    ``entries`` (B, E + q) already mapped onto that layer's entries."""
    e = entries.shape[1] - q
    prefix = entries[:, :e].bool()[:, None, :].expand(-1, q, -1)
    new = entries[:, e:].bool()[:, None, :] & torch.ones(q, q, dtype=torch.bool, device=entries.device).tril()
    allowed = torch.cat([prefix, new], dim=-1)[:, None]
    return torch.zeros(allowed.shape, dtype=dtype, device=entries.device).masked_fill(~allowed, torch.finfo(dtype).min)
