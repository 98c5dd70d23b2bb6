"""Quality metrics for embeddings: retrieval recall/MRR, STS Spearman, fidelity to a reference, pooling.

Pure torch and model-agnostic: every function takes tensors (or sequences) and returns Python floats, so
the same code scores a baseline model and its token-reduced variant.  Inputs are validated up front with
``ValueError`` messages naming the offending shapes, because a silently broadcast shape is the easiest
way to report a wrong number.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["cosine_fidelity", "mean_pool", "retrieval_metrics", "spearman", "sts_spearman"]

# Elements of the (queries x passages) score block computed at once: 2**24 float32 = 64 MiB.
_SCORE_BLOCK = 1 << 24


def _float(t: Tensor) -> Tensor:
    """``t`` as a floating tensor of at least float32 precision (half/bfloat16 are upcast)."""
    return t.to(torch.promote_types(t.dtype, torch.float32)) if t.is_floating_point() else t.to(torch.float32)


def _as_1d(values: Sequence[float] | Tensor, name: str) -> Tensor:
    t = (
        values.detach().to("cpu", torch.float64)
        if isinstance(values, Tensor)
        else torch.tensor(list(values), dtype=torch.float64)
    )
    if t.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {tuple(t.shape)}")
    return t


def _as_index(gold: Sequence[int] | Tensor) -> Tensor:
    """Gold indices as a 1-D int64 CPU tensor; floats and bools are rejected rather than truncated."""
    if isinstance(gold, Tensor):
        if gold.is_floating_point() or gold.is_complex() or gold.dtype == torch.bool:
            raise ValueError(f"gold must hold integer indices, got dtype {gold.dtype}")
        return gold.detach().to("cpu", torch.long).reshape(-1)
    try:
        return torch.tensor([operator.index(g) for g in gold], dtype=torch.long)
    except TypeError as err:
        raise ValueError(f"gold must hold integer indices ({err})") from err


def retrieval_metrics(
    query_emb: Tensor,
    passage_emb: Tensor,
    gold: Sequence[int] | Tensor,
    ks: Sequence[int] = (1, 10),
) -> dict[str, float]:
    """Recall@k and MRR of cosine-similarity retrieval, ranking each query's gold passage among ALL passages.

    ``query_emb`` is [Q, D], ``passage_emb`` [P, D], ``gold[i]`` the index of query i's passage.  Both sides
    are L2-normalized (at least float32).  The gold rank is 1 + (passages scoring strictly higher) +
    (passages scoring exactly equal *with a lower index*): ties are broken deterministically against the
    gold passage only when the competitor comes first, so e.g. constant embeddings give rank = gold + 1
    rather than a flattering 1.  Queries are processed in chunks so memory stays bounded for big pools.
    Returns ``{"recall@k": ... for k in ks, "mrr": ...}`` as fractions in [0, 1].
    """
    if query_emb.ndim != 2 or passage_emb.ndim != 2:
        raise ValueError(
            f"embeddings must be 2-D, got query {tuple(query_emb.shape)}, passage {tuple(passage_emb.shape)}"
        )
    if query_emb.shape[1] != passage_emb.shape[1]:
        raise ValueError(f"embedding dims differ: query {tuple(query_emb.shape)} vs passage {tuple(passage_emb.shape)}")
    n_q, n_p = query_emb.shape[0], passage_emb.shape[0]
    if n_q == 0 or n_p == 0:
        raise ValueError(f"need at least one query and one passage, got {n_q} and {n_p}")
    gold_t = _as_index(gold)
    if gold_t.numel() != n_q:
        raise ValueError(f"gold has {gold_t.numel()} entries for {n_q} queries")
    if bool((gold_t < 0).any()) or bool((gold_t >= n_p).any()):
        raise ValueError(f"gold indices must lie in [0, {n_p}), got min {int(gold_t.min())}, max {int(gold_t.max())}")
    ks = tuple(int(k) for k in ks)
    if any(k < 1 for k in ks):
        raise ValueError(f"ks must be positive, got {ks}")

    dtype = torch.promote_types(_float(query_emb).dtype, _float(passage_emb).dtype)
    device = passage_emb.device
    p = F.normalize(passage_emb.detach().to(device, dtype), dim=-1)
    q_all = query_emb.detach().to(device)
    gold_t = gold_t.to(device, torch.long)
    positions = torch.arange(n_p, device=device)
    chunk = max(1, _SCORE_BLOCK // n_p)
    ranks = torch.empty(n_q, dtype=torch.long, device=device)
    for start in range(0, n_q, chunk):
        stop = min(start + chunk, n_q)
        q = F.normalize(q_all[start:stop].to(dtype), dim=-1)
        scores = q @ p.T
        g = gold_t[start:stop, None]
        gold_score = scores.gather(1, g)
        higher = (scores > gold_score).sum(1)
        tied_before = ((scores == gold_score) & (positions[None, :] < g)).sum(1)
        ranks[start:stop] = 1 + higher + tied_before
    ranks_f = ranks.to(torch.float64)
    out = {f"recall@{k}": float((ranks <= k).to(torch.float64).mean()) for k in ks}
    out["mrr"] = float((1.0 / ranks_f).mean())
    return out


def _average_ranks(x: Tensor) -> Tensor:
    """1-based ranks of a 1-D tensor, tied values sharing the mean of their positions."""
    values, order = torch.sort(x, stable=True)
    _, counts = torch.unique_consecutive(values, return_counts=True)
    ends = torch.cumsum(counts, 0).to(torch.float64)  # 1-based position of each group's last element
    group_rank = ends - (counts.to(torch.float64) - 1) / 2
    ranks = torch.empty_like(x, dtype=torch.float64)
    ranks[order] = torch.repeat_interleave(group_rank, counts)
    return ranks


def spearman(x: Sequence[float] | Tensor, y: Sequence[float] | Tensor) -> float:
    """Spearman rank correlation: Pearson correlation of the average ranks (ties share their mean rank).

    Matches ``scipy.stats.spearmanr``.  Returns NaN when either input is constant (correlation undefined);
    raises ``ValueError`` on length mismatch, fewer than 2 values or non-finite values.
    """
    xt, yt = _as_1d(x, "x"), _as_1d(y, "y")
    if xt.numel() != yt.numel():
        raise ValueError(f"x and y differ in length: {xt.numel()} vs {yt.numel()}")
    if xt.numel() < 2:
        raise ValueError(f"spearman needs at least 2 values, got {xt.numel()}")
    if not (bool(torch.isfinite(xt).all()) and bool(torch.isfinite(yt).all())):
        raise ValueError("spearman inputs must be finite (found NaN or inf)")
    rx, ry = _average_ranks(xt), _average_ranks(yt)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = torch.sqrt((rx * rx).sum() * (ry * ry).sum())
    if float(denom) == 0.0:
        return float("nan")
    return float(((rx * ry).sum() / denom).clamp(-1.0, 1.0))


def sts_spearman(emb1: Tensor, emb2: Tensor, gold_scores: Sequence[float] | Tensor) -> float:
    """STS score: Spearman between cosine(emb1[i], emb2[i]) and the human scores, multiplied by 100.

    The x100 follows the usual STS-B / MTEB reporting convention (e.g. 82.0 rather than 0.820).
    """
    if emb1.ndim != 2 or emb1.shape != emb2.shape:
        raise ValueError(
            f"emb1 and emb2 must be 2-D with equal shapes, got {tuple(emb1.shape)} and {tuple(emb2.shape)}"
        )
    gold = _as_1d(gold_scores, "gold_scores")
    if gold.numel() != emb1.shape[0]:
        raise ValueError(f"gold_scores has {gold.numel()} entries for {emb1.shape[0]} pairs")
    dtype = torch.promote_types(_float(emb1).dtype, _float(emb2).dtype)
    cos = F.cosine_similarity(emb1.detach().to(dtype), emb2.detach().to(emb1.device, dtype), dim=-1)
    return 100.0 * spearman(cos, gold)


def cosine_fidelity(reduced: Tensor, reference: Tensor) -> dict[str, float]:
    """How closely reduced-model embeddings track the reference model's: row-wise cosine statistics.

    Both tensors are [..., D] with equal shapes (leading dims are flattened into rows).  Returns the mean,
    the minimum and the 5th percentile (linear interpolation, as ``numpy.quantile``) of the per-row cosine;
    the tail numbers expose rare badly-damaged inputs that a mean hides.
    """
    if reduced.shape != reference.shape or reduced.ndim < 2:
        raise ValueError(
            f"reduced and reference must have equal shapes [..., D], got {tuple(reduced.shape)} "
            f"and {tuple(reference.shape)}"
        )
    if reduced.numel() == 0:
        raise ValueError(f"cosine_fidelity got empty tensors of shape {tuple(reduced.shape)}")
    dtype = torch.promote_types(_float(reduced).dtype, _float(reference).dtype)
    a = reduced.detach().reshape(-1, reduced.shape[-1]).to(dtype)
    b = reference.detach().reshape(-1, reference.shape[-1]).to(a.device, dtype)
    cos = F.cosine_similarity(a, b, dim=-1).to("cpu", torch.float64)
    return {"mean": float(cos.mean()), "min": float(cos.min()), "p05": float(torch.quantile(cos, 0.05))}


def mean_pool(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mask-weighted mean over tokens: [B, T, D] hidden states, [B, T] mask -> [B, D].

    ``mask`` may be 0/1 (attention mask, bool or int) or non-negative float weights, e.g. the number of
    original tokens each merged token stands for, which makes pooling a merged sequence equal to pooling
    the unmerged one.  Sums accumulate in at least float32 and are divided in float64 so large weights do
    not lose precision; rows whose weights sum to 0 return zeros instead of NaN.  The result has dtype
    ``promote_types(hidden.dtype, float32)``.
    """
    if hidden.ndim != 3:
        raise ValueError(f"hidden must be [batch, tokens, dim], got shape {tuple(hidden.shape)}")
    if mask.shape != hidden.shape[:2]:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match hidden {tuple(hidden.shape)}[:2]")
    out_dtype = _float(hidden).dtype
    weights = mask.to(hidden.device, out_dtype)
    if bool((weights < 0).any()):
        raise ValueError("mask weights must be non-negative")
    total = torch.einsum("btd,bt->bd", hidden.to(out_dtype), weights).to(torch.float64)
    denom = mask.to(hidden.device, torch.float64).sum(1, keepdim=True)
    pooled = torch.where(denom > 0, total / denom.clamp_min(torch.finfo(torch.float64).tiny), 0.0)
    return pooled.to(out_dtype)
