"""Attention rows for a few queries, recomputed without materializing the full attention matrix.

SDPA and flash kernels never return attention weights, so presses that score by attention rebuild
the rows they need from the layer's own projections: queries for a window of positions (with the
model's RoPE applied exactly as in its forward) against the cached keys. That costs O(window x N)
memory per head instead of O(N^2). ``column_mass`` does the same for *all* queries in chunks, for
presses (H2O) whose score is the attention each key receives from every later query.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rotate_half(x: Tensor) -> Tensor:
    h = x.shape[-1] // 2
    return torch.cat((-x[..., h:], x[..., :h]), dim=-1)


def _rotated(proj: nn.Module, norm: nn.Module | None, head_dim: int, hidden: Tensor, cos: Tensor, sin: Tensor):
    b, w, _ = hidden.shape
    x = proj(hidden).view(b, w, -1, head_dim)
    if norm is not None:
        x = norm(x)
    x = x.transpose(1, 2)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return x * cos + rotate_half(x) * sin


def window_queries(attn: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Queries (B, H, w, D) of the positions in ``hidden`` (B, w, C), rotated like the model does.

    Handles the per-head query norm of Qwen3/Gemma3-style attention when the module has one.
    """
    return _rotated(attn.q_proj, getattr(attn, "q_norm", None), attn.head_dim, hidden, cos, sin)


def window_keys(attn: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Keys (B, Hkv, w, D) of ``hidden``, rotated (and k-normed) as the model computes them."""
    return _rotated(attn.k_proj, getattr(attn, "k_norm", None), attn.head_dim, hidden, cos, sin)


def window_logits(
    queries: Tensor, keys: Tensor, scaling: float, valid: Tensor | None = None, q_offset: int | None = None,
    positions: Tensor | None = None,
) -> Tensor:
    """Masked attention logits (B, H, w, N) of ``queries`` (B, H, w, D) over ``keys`` (B, Hkv, N, D).

    The w queries are the last w positions of the sequence (causal: query i sees keys <= N - w + i,
    or ``q_offset + i`` when given, or ``positions[i]`` (w,) for scattered queries). ``valid`` (B, N)
    marks real (non-padding) keys, or (B, Hkv, N) per KV head (ragged storage, where each head holds
    its own entries behind filler). GQA: each query head attends to its KV head, as in the model.
    """
    b, h, w, d = queries.shape
    hkv, n = keys.shape[1], keys.shape[2]
    q = queries.view(b, hkv, h // hkv, w, d)
    logits = torch.einsum("bgqwd,bgnd->bgqwn", q.to(keys.dtype), keys).float() * scaling
    start = n - w if q_offset is None else q_offset
    pos_q = torch.arange(w, device=keys.device) + start if positions is None else positions.to(keys.device)
    masked = torch.arange(n, device=keys.device)[None, :] > pos_q[:, None]  # (w, N)
    logits = logits.masked_fill(masked, float("-inf"))
    if valid is not None:
        per_head = valid[:, :, None, None, :] if valid.ndim == 3 else valid[:, None, None, None, :]
        logits = logits.masked_fill(~per_head, float("-inf"))
    return logits.view(b, h, w, n)


def window_attention(
    queries: Tensor, keys: Tensor, scaling: float, valid: Tensor | None = None, q_offset: int | None = None,
    positions: Tensor | None = None,
) -> Tensor:
    """Softmax attention rows (B, H, w, N); see :func:`window_logits` (fully masked rows give zeros)."""
    logits = window_logits(queries, keys, scaling, valid, q_offset, positions)
    return torch.softmax(logits, dim=-1).nan_to_num_(0.0)


def column_mass(
    attn: nn.Module, hidden: Tensor, cos: Tensor, sin: Tensor, keys: Tensor, valid: Tensor | None, chunk: int = 256
) -> Tensor:
    """Attention each key receives, summed over the queries of ``hidden`` (B, H, N), ``chunk`` queries at a time.

    ``hidden`` holds the last q of the N cached positions (all N in a one-shot prefill; the newest chunk
    after a compressed prefix in a chunked one). ``valid``: (B, N), or (B, Hkv, N) per KV head."""
    n, offset = hidden.shape[1], keys.shape[2] - hidden.shape[1]
    rows = None if valid is None else (valid if valid.ndim == 2 else valid.any(1))  # the queries: real tokens
    total = None
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        q = window_queries(attn, hidden[:, s:e], cos[:, s:e], sin[:, s:e])
        a = window_attention(q, keys, attn.scaling, valid, q_offset=offset + s)
        if rows is not None:
            a = a * rows[:, None, offset + s : offset + e, None]  # padding queries contribute nothing
        part = a.sum(dim=2)
        total = part if total is None else total + part
    return total


def group_mean(scores: Tensor, n_kv_heads: int) -> Tensor:
    """Average per-query-head scores (B, H, N) over each GQA group -> (B, Hkv, N)."""
    b, h, n = scores.shape
    return scores.view(b, n_kv_heads, h // n_kv_heads, n).mean(dim=2)


def pool1d(scores: Tensor, kernel: int) -> Tensor:
    """Max-pool scores along the token axis (odd ``kernel``, same length), as SnapKV clusters neighbours."""
    if kernel <= 1:
        return scores
    shape = scores.shape
    x = scores.reshape(-1, 1, shape[-1])
    return torch.nn.functional.max_pool1d(x, kernel, stride=1, padding=kernel // 2).view(shape)
