"""Pure tensor functions the video methods share: similarities, temporal segments, budgets, density peaks.

Every similarity is a matrix product of unit vectors (so ``FlopCounterMode`` sees the MACs the methods
report); merging goes through :func:`tokenreduce.core.assign.apply_assignment` (size-weighted means) and
selection through :func:`tokenreduce.vlm.reduce.top_k`, so no merge or top-k is written twice.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ...core.assign import apply_assignment
from ...core.noise import hash_uniform
from ..reduce import top_k


def unit(x: Tensor) -> Tensor:
    """Rows scaled to unit length, in at least float32."""
    return F.normalize(x.to(torch.promote_types(x.dtype, torch.float32)), dim=-1)


def aligned_similarity(a: Tensor, b: Tensor) -> Tensor:
    """Cosine of each token of ``a`` (..., P, C) with the token at the same place in ``b`` (..., P, C)."""
    return (unit(a).unsqueeze(-2) @ unit(b).unsqueeze(-1)).squeeze(-1).squeeze(-1)


def frame_similarity(x: Tensor) -> Tensor:
    """(T-1,) cosine of consecutive frames' mean tokens, for ``x`` (T, P, C)."""
    m = x.float().mean(1)
    return aligned_similarity(m[1:, None], m[:-1, None])[:, 0]


def segments_from_cuts(frames: int, cuts: list[int]) -> list[tuple[int, int]]:
    """[start, end) frame ranges split before every frame in ``cuts``."""
    edges = [0, *sorted(set(c for c in cuts if 0 < c < frames)), frames]
    return list(zip(edges[:-1], edges[1:]))


def apportion(weights: Tensor, total: int, caps: Tensor) -> Tensor:
    """Integers (G,) summing to ``total`` (<= caps.sum()), each <= its cap, in proportion to ``weights``
    (largest remainders; a capped group's excess goes to the others)."""
    w = weights.double().clamp(min=0)
    caps = caps.long()
    out = torch.zeros_like(caps)
    free = caps > 0
    left = total
    while left > 0 and bool(free.any()):
        ww = torch.where(free, w, 0.0)
        ww = torch.where(free, 1.0, 0.0) if float(ww.sum()) <= 0 else ww
        share = ww / ww.sum() * left
        take = torch.minimum(share.floor().long(), caps - out)
        rem = left - int(take.sum())
        frac = torch.where(free & (out + take < caps), share - share.floor(), -1.0)
        order = torch.sort(frac, descending=True, stable=True).indices
        extra = torch.zeros_like(take)
        extra[order[: max(0, min(rem, int((frac >= 0).sum())))]] = 1
        out = out + take + extra
        left = total - int(out.sum())
        free = out < caps
    return out


def density_peaks(x: Tensor, k: int, knn: int = 5, seed: int = 0) -> tuple[Tensor, Tensor]:
    """DPC-kNN (Du et al., 2016, after Rodriguez & Laio, Science 2014) on ``x`` (N, C) by cosine distance:
    local density from the k nearest neighbours, distance to the nearest denser token, their product ranks
    the ``k`` cluster centres. Returns the centres (k,) ascending and every token's centre slot (N,)."""
    n = x.shape[0]
    xn = unit(x)
    sim = xn @ xn.T
    dist = (2 - 2 * sim).clamp(min=0).sqrt()
    nn_ = min(knn, n - 1)
    if nn_ > 0:
        near = dist.topk(nn_ + 1, dim=1, largest=False).values[:, 1:]
        rho = torch.exp(-(near**2).mean(1))
    else:
        rho = torch.ones(n, device=x.device)
    rho = rho + 1e-6 * hash_uniform(torch.arange(n, device=x.device), seed, 7)  # break ties, batch-independent
    denser = rho[None, :] > rho[:, None]
    delta = torch.where(denser, dist, torch.inf).min(1).values
    delta = torch.where(torch.isinf(delta), dist.max(), delta)
    centres = top_k(rho * delta, k)
    slot = sim[:, centres].argmax(1)
    slot[centres] = torch.arange(len(centres), device=x.device)
    return centres, slot


def merge_slots(x: Tensor, slot: Tensor, n_slots: int, sizes: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Size-weighted mean of ``x`` (N, C) per slot (N,) -> (n_slots, C) and the slots' sizes."""
    s = torch.ones(x.shape[0], device=x.device) if sizes is None else sizes.float()
    work = x.to(torch.promote_types(x.dtype, torch.float32))
    out, size = apply_assignment(work[None], s[None], slot[None], n_slots)
    return out[0].to(x.dtype), size[0]


def cluster_merge(x: Tensor, idx: Tensor, k: int, sizes: Tensor | None = None, knn: int = 5) -> tuple[Tensor, Tensor]:
    """``x`` (N, C) at local indices ``idx`` (N,) -> ``k`` density-peak clusters, each merged into its centre
    (which keeps its index). Returns (indices (k,), embeddings (k, C)), indices ascending."""
    if k >= x.shape[0]:
        return idx, x
    if k == 0:
        return idx[:0], x[:0]
    centres, slot = density_peaks(x, k, knn)
    merged, _ = merge_slots(x, slot, len(centres), sizes)
    out_idx = idx[centres]
    order = torch.argsort(out_idx)
    return out_idx[order], merged[order]


def consecutive_similarity(x: Tensor) -> Tensor:
    """(T-1, P): cosine of every token of frames 1.. with the token at its place in the frame before."""
    return aligned_similarity(x[1:], x[:-1])


def static_merge(
    x: Tensor, step: Tensor, segments: list[tuple[int, int]], k: int, threshold: float
) -> tuple[Tensor, Tensor, Tensor]:
    """Temporal merging inside segments (PruneVid, HoliTom): a place whose token stays similar (consecutive
    cosine ``step`` (T-1, P) >= ``threshold`` throughout a segment) becomes one token, the mean over the
    segment's frames, at its first frame. The most static places merge first, only while at least ``k``
    tokens remain.

    ``x`` is (T, P, C). Returns the remaining tokens' local indices (frame-major), embeddings and sizes."""
    t, p, c = x.shape
    size = torch.ones(t, p, device=x.device)
    alive = torch.ones(t, p, dtype=torch.bool, device=x.device)
    out = x.clone()
    cand = [(s, e) for s, e in segments if e - s >= 2]
    if cand:
        sim = torch.cat([step[s : e - 1].min(0).values for s, e in cand])  # (segments * P,)
        count = t * p
        for i in torch.sort(sim, descending=True, stable=True).indices.tolist():
            if float(sim[i]) < threshold:
                break
            (s, e), q = cand[i // p], i % p
            if count - (e - s - 1) < k:
                continue
            out[s, q] = x[s:e, q].float().mean(0).to(x.dtype)
            size[s, q] = e - s
            alive[s + 1 : e, q] = False
            count -= e - s - 1
    flat = alive.reshape(-1)
    idx = flat.nonzero().squeeze(1)
    return idx, out.reshape(t * p, c)[flat], size.reshape(-1)[flat]


def spatial_merge(
    idx: Tensor, x: Tensor, size: Tensor, frames: int, p: int, k: int, knn: int
) -> tuple[Tensor, Tensor]:
    """Per-frame density-peak merging (PruneVid, HoliTom) of the tokens left at local indices ``idx`` with
    ``size``: frames share ``k`` in proportion to what they hold; ascending indices and embeddings."""
    frame = idx // p
    held = torch.bincount(frame, minlength=frames)
    quota = apportion(held, k, held)
    out_i, out_x = [], []
    for f in range(frames):
        sel = (frame == f).nonzero().squeeze(1)
        if len(sel) == 0:
            continue
        i, e = cluster_merge(x[sel], idx[sel], int(quota[f]), size[sel], knn)
        out_i.append(i)
        out_x.append(e)
    i, e = torch.cat(out_i), torch.cat(out_x)
    order = torch.argsort(i)
    return i[order], e[order]


def segment_then_merge(
    emb: Tensor, frames: int, p: int, k: int, threshold: float, knn: int,
    segments: Callable[[Tensor, Tensor], list[tuple[int, int]]],
) -> tuple[Tensor, Tensor]:
    """The pipeline PruneVid and HoliTom share on a video's ``frames x p`` tokens ``emb``: temporal segments
    from ``segments(x, step)`` (``step``: each place's consecutive-frame cosine), static places merged over
    time within them (:func:`static_merge`), then per-frame density-peak merging to ``k`` (:func:`spatial_merge`).
    A one-frame video goes straight to the spatial stage."""
    x = emb.view(frames, p, -1)
    if frames < 2:
        return spatial_merge(torch.arange(p, device=x.device), emb, torch.ones(p, device=x.device), 1, p, k, knn)
    step = consecutive_similarity(x)
    idx, rest, size = static_merge(x, step, segments(x, step), k, threshold)
    return spatial_merge(idx, rest, size, frames, p, k, knn)


def spatial_merge_macs(frames: int, p: int, k: int, hidden: int) -> int:
    """:func:`spatial_merge`'s density matrices when no place merged over time (an upper bound otherwise)."""
    held = torch.full((frames,), p)
    quota = apportion(held, k, held)
    return sum(p * p * hidden for q in quota.tolist() if 0 < q < p)
