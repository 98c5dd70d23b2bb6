"""LLaVA-NeXT (AnyRes) per-crop reduction; the token layouts are in :mod:`.next_layout`.

Budgets apply per crop: the thumbnail and each high-res crop keep the method's share of their own tokens
(``tokens=k`` means k per crop); newline tokens are never dropped. Inside-LLM methods rank within each crop.

``thumbnail_guidance`` follows GlobalCom2's crop-wise allocation (Liu et al., "Compression with Global
Guidance: Towards Training-free High-Resolution MLLMs Acceleration", arXiv 2501.05179; AAAI 2026 as "Global
Compression Commander"), simplified: the high-res crops share the same total budget in proportion to the
thumbnail's [CLS] attention mass over the part of the image each crop covers. Tokens inside a crop are
still ranked by the method's own per-crop scores (GlobalCom2 also mixes in thumbnail scores there).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from . import reduce as R
from .next_layout import (
    NEWLINE,
    NextLayout,
    _candidates,
    attach,
    image_layouts,
    layouts_from_features,
    layouts_from_sizes,
)

if TYPE_CHECKING:
    from .families import Image, VLMParts
    from .methods import VisualMethod

__all__ = [
    "NEWLINE",
    "NextLayout",
    "_candidates",
    "attach",
    "image_layouts",
    "layouts_from_features",
    "layouts_from_sizes",
]


def guided(method: VisualMethod) -> bool:
    return bool(getattr(method, "thumbnail_guidance", False))


def check(parts: VLMParts, method: VisualMethod) -> None:
    """Reject ``thumbnail_guidance`` where it means nothing, before any compute."""
    if guided(method) and (parts.kind != "llava-next" or not method.needs_cls or method.stage != "before"):
        raise ValueError(
            f"{method.name}: thumbnail_guidance needs a LLaVA-NeXT model and a [CLS]-attention method "
            "applied before the LLM (fastervlm, visionzip)"
        )


def allot(weights: Tensor, caps: list[int], total: int) -> list[int]:
    """Integers <= caps summing to min(total, sum(caps)), proportional to ``weights`` (largest remainders;
    capped shares are filled first and the rest is shared among the others)."""
    total = min(total, sum(caps))
    w = weights.detach().double().cpu().clamp(min=0) + 1e-12
    share = torch.zeros(len(caps), dtype=torch.float64)
    free = torch.tensor([c > 0 for c in caps])
    cap = torch.tensor(caps, dtype=torch.float64)
    left = float(total)
    while free.any():
        s = torch.where(free, left * w / w[free].sum(), 0.0)
        over = free & (s >= cap)
        if not over.any():
            share = torch.where(free, s, share)
            break
        share = torch.where(over, cap, share)
        left -= float(cap[over].sum())
        free &= ~over
    out = share.floor().long()
    rest = total - int(out.sum())
    order = torch.sort(torch.where(out < cap.long(), share - out, -1.0), descending=True, stable=True).indices
    out[order[:rest]] += 1
    return out.tolist()


def thumbnail_mass(lay: NextLayout, thumb: Tensor) -> Tensor:
    """[CLS] attention mass of the thumbnail (g*g,) over the image region each high-res crop covers.

    The thumbnail is the whole image resized to the crop size, and the unpadded window is the whole image
    too, so a crop's window span maps linearly onto thumbnail cells; cells count by overlapped area."""
    g = lay.g
    t = thumb.double().view(g, g)
    h, w = lay.window[1] - lay.window[0], lay.window[3] - lay.window[2]
    if h == 0 or w == 0:  # an extreme aspect unpadded every crop away
        return torch.zeros(lay.crops - 1, dtype=t.dtype)
    edges = torch.arange(g + 1, dtype=torch.float64) / g

    def overlap(a: float, b: float) -> Tensor:  # (g,) fraction of each thumbnail cell inside [a, b)
        return ((edges[1:].clamp(max=b) - edges[:-1].clamp(min=a)).clamp(min=0) * g).to(t)

    out = []
    for k in range(1, lay.crops):
        (r0, r1), (c0, c1) = lay.crop_span(k)
        out.append(overlap(r0 / h, r1 / h) @ t @ overlap(c0 / w, c1 / w))
    return torch.stack(out)


def crop_budgets(method: VisualMethod, lay: NextLayout, sizes: list[int], cls: Tensor | None) -> list[int]:
    """Tokens each crop keeps: the method's budget of each crop's own count, or with thumbnail guidance
    the same high-res total shared by the thumbnail's attention mass."""
    budgets = [method.budget(n) if n else 0 for n in sizes]
    if guided(method) and lay.crops > 1:
        mass = thumbnail_mass(lay, cls[lay.offset])
        budgets[1:] = allot(mass, sizes[1:], sum(budgets[1:]))
    return budgets


def reduce_image(method: VisualMethod, emb: Tensor, lay: NextLayout, cls: Tensor | None) -> tuple[Tensor, Tensor]:
    """One image's run (n, C) -> ascending kept run positions and their embeddings, crop by crop."""
    crop, patch = lay.crop.to(emb.device), lay.patch.to(emb.device)
    members = [(crop == k).nonzero().squeeze(1) for k in range(lay.crops)]
    budgets = crop_budgets(method, lay, [len(m) for m in members], cls)
    idx, out = [(crop == NEWLINE).nonzero().squeeze(1)], []
    out.append(emb[idx[0]])
    for k, (pos, b) in enumerate(zip(members, budgets)):
        if b >= len(pos):
            idx.append(pos)
            out.append(emb[pos])
        elif b > 0:
            c = None if cls is None else cls[lay.offset + k, patch[pos]]
            loc, red = method.reduce(emb[pos], lay.crop_grid(k), c, b)
            idx.append(pos[loc])
            out.append(red)
    idx_all = torch.cat(idx)
    order = torch.argsort(idx_all)
    return idx_all[order], torch.cat(out)[order]


def groups(images: list[list[Image]], n: int, device) -> tuple[Tensor, list[int]]:
    """(B, n) crop group of every original token (-1: text or newline, never dropped) and each group's size."""
    out, sizes = torch.full((len(images), n), -1, dtype=torch.long, device=device), []
    for b, row in enumerate(images):
        for im in row:
            crop = im.layout.crop.to(device)
            for k in range(im.layout.crops):
                pos = (crop == k).nonzero().squeeze(1)
                out[b, im.start + pos] = len(sizes)
                sizes.append(len(pos))
    return out, sizes


def inside_keep(group: Tensor, sizes: list[int], scores: Tensor, count) -> Tensor:
    """(B, N) keep mask: in every crop group the ``count(group size)`` best-scored current tokens; others stay."""
    keep = group < 0
    for b in range(group.shape[0]):
        for gid in torch.unique(group[b]).tolist():
            if gid < 0:
                continue
            pos = (group[b] == gid).nonzero().squeeze(1)
            k = min(count(sizes[gid]), len(pos))
            keep[b, pos[R.top_k(scores[b, pos], k)]] = True
    return keep
