"""Token assignments: the one representation every reduction produces.

A reduction at one layer is a map ``dst`` of shape (B, N): token ``i`` of row ``b`` goes to output
slot ``dst[b, i]`` (several tokens sharing a slot are merged) or is dropped (``dst == -1``).
Merging, pruning, fusing and padding compaction are all such maps, so applying them, tracking
sources and restoring the original length is written once, here.

Padding is a token of size 0: it never carries weight into a merge, is masked by the size-derived
attention bias, and always sits after the real tokens of its row.
"""

from __future__ import annotations

import torch
from torch import Tensor


def compact(keep: Tensor, valid: Tensor, n_out: int | None = None) -> tuple[Tensor, int]:
    """Output slots for kept tokens in original order, then padding; returns (slot, n_out).

    ``keep`` (B, N) marks real tokens that get their own slot; ``valid`` marks real tokens.
    Rows are rectangular: ``n_out`` is the largest kept count and shorter rows are padded by
    reusing their padding tokens (size 0). Tokens without a slot get -1. A caller that knows
    ``n_out`` (every row keeps exactly that many) passes it, so no tensor value is read: the
    static-shape path used under ``torch.compile`` and ONNX export.
    """
    keep = keep & valid
    n_kept = keep.sum(1, keepdim=True)
    if n_out is None:
        n_out = int(n_kept.max()) if keep.numel() else 0
    slot = torch.cumsum(keep, 1) - 1
    pad = ~valid
    pad_slot = n_kept + torch.cumsum(pad, 1) - 1
    out = torch.where(keep, slot, torch.where(pad & (pad_slot < n_out), pad_slot, -1))
    return out, n_out


def stable_order(x: Tensor, descending: bool) -> Tensor:
    """Indices sorting each row of ``x`` (B, N); ties keep their original order.

    While exporting to ONNX, a full-length TopK replaces ``sort(stable=True)`` (which has no ONNX
    form); ONNX TopK also puts the lower index first among equals, so the order is the same.
    """
    if torch.onnx.is_in_onnx_export():
        return torch.topk(x, x.shape[1], dim=1, largest=descending, sorted=True).indices
    return torch.sort(x, dim=1, descending=descending, stable=True).indices


def apply_assignment(
    x: Tensor, sizes: Tensor, dst: Tensor, n_out: int, weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Merge tokens into slots: weighted mean of ``x`` and summed ``sizes`` per output slot.

    ``weights`` default to ``sizes`` (ToMe's size-weighted average). Dropped tokens (-1) go to a
    trash slot that is cut off. Empty slots (padding) come out as zeros with size 0.
    """
    b, n, c = x.shape
    w = sizes if weights is None else weights
    if torch.onnx.is_in_onnx_export():
        return _apply_one_hot(x, sizes, w, dst, n_out)
    trash = b * n_out  # one shared slot after all rows, so the kept part stays contiguous
    flat = torch.where(dst < 0, trash, dst + torch.arange(b, device=x.device)[:, None] * n_out).reshape(-1)
    acc = x.new_zeros(trash + 1, c).index_add_(0, flat, (x * w[..., None].to(x.dtype)).reshape(-1, c))
    wsum = w.new_zeros(trash + 1).index_add_(0, flat, w.reshape(-1))
    ssum = sizes.new_zeros(trash + 1).index_add_(0, flat, sizes.reshape(-1))
    out = acc[:trash].div_(torch.where(wsum[:trash] > 0, wsum[:trash], 1.0)[:, None].to(x.dtype))
    return out.view(b, n_out, c), ssum[:trash].view(b, n_out)


def _apply_one_hot(x: Tensor, sizes: Tensor, w: Tensor, dst: Tensor, n_out: int) -> tuple[Tensor, Tensor]:
    """:func:`apply_assignment` as one-hot matmuls (ONNX has no scatter-mean; index_add exports
    poorly). Costs B·N·n_out·C extra MACs, so it is used only while exporting."""
    onehot = (dst[..., None] == torch.arange(n_out, device=dst.device)).to(x.dtype)  # (B, N, n_out); -1 matches none
    wx = w.to(x.dtype)
    acc = onehot.transpose(1, 2) @ (x * wx[..., None])
    wsum = (onehot * wx[..., None]).sum(1)
    ssum = (onehot * sizes.to(x.dtype)[..., None]).sum(1).to(sizes.dtype)
    return acc / torch.where(wsum > 0, wsum, 1.0)[..., None], ssum


def gather_assignment(x: Tensor, dst: Tensor, n_out: int) -> Tensor:
    """Move tokens of a one-to-one assignment (no slot shared) by a gather, bit-exactly."""
    b, n = dst.shape
    order = torch.full((b, n_out + 1), n, dtype=torch.long, device=dst.device)
    idx = torch.where(dst < 0, n_out, dst)
    order.scatter_(1, idx, torch.arange(n, device=dst.device).expand(b, n))
    padded = torch.cat([x, x.new_zeros(b, 1, *x.shape[2:])], 1)
    index = order[:, :n_out]
    return padded.gather(1, index.view(b, n_out, *([1] * (x.dim() - 2))).expand(b, n_out, *x.shape[2:]))


def update_sources(src: Tensor, dst: Tensor) -> Tensor:
    """Compose an original-token → slot map with this layer's assignment (-1 stays -1)."""
    moved = dst.gather(1, src.clamp(min=0))
    return torch.where(src < 0, src, moved)


def restore(x: Tensor, src: Tensor, fill: Tensor | None = None) -> Tensor:
    """Back to original length: each original token takes the final state of its slot.

    Tokens that were dropped (``src == -1``) take ``fill`` (their state when dropped) or zeros.
    """
    b, n0 = src.shape
    out = x.gather(1, src.clamp(min=0)[..., None].expand(b, n0, x.shape[-1]))
    if fill is None:
        fill = torch.zeros_like(out)
    return torch.where((src < 0)[..., None], fill, out)


def attention_bias(sizes: Tensor, proportional: bool, dtype: torch.dtype) -> Tensor:
    """Additive key bias (B, 1, 1, N): log(size) for proportional attention, and a large negative
    value for padding (size 0). Suitable as a float ``attn_mask`` for SDPA."""
    neg = torch.finfo(dtype).min
    if proportional:
        bias = torch.where(sizes > 0, sizes.clamp(min=1e-6).log(), neg)
    else:
        bias = torch.where(sizes > 0, 0.0, neg)
    return bias.to(dtype)[:, None, None, :]
