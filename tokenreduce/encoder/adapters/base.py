"""What a model family must tell the runner: where its blocks are and how to split one block.

A family adapter is a handful of small functions. The runner (``runner.py``) owns everything
generic: budgets, state between layers, applying assignments, restoring the original length.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
from torch import Tensor, nn
from torch.nn.attention.flex_attention import BlockMask

from ...core.dims import ModelDims


class AttnOut(NamedTuple):
    """A block's attention half: the residual stream after attention, plus what scorers may use."""

    x: Tensor  # (B, N, C)
    q: Tensor  # (B, H, N, d) queries, after any q-norm / RoPE the block applies
    k: Tensor  # (B, H, N, d)
    v: Tensor  # (B, H, N, d)
    scaling: float


class Family(Protocol):
    """A model family: locate its blocks and run a block as attention half + MLP half."""

    name: str
    padded: bool  # inputs may carry padding (text); False for images, whose masks are all-true

    def find_layers(self, model: nn.Module) -> nn.ModuleList | None: ...

    def default_protected(self, model: nn.Module) -> int: ...

    def dims(self, model: nn.Module) -> ModelDims: ...

    def attention(self, layer: nn.Module, x: Tensor, mask: Tensor | None) -> AttnOut: ...

    def mlp(self, layer: nn.Module, x: Tensor) -> Tensor: ...


def module_list_of(model: nn.Module, class_names: set[str], prefer: str | None = None) -> nn.ModuleList | None:
    """The first ModuleList whose children are all blocks of the given classes.

    ``prefer`` picks, among several stacks (e.g. CLIP text and vision towers), the one whose
    qualified name contains it.
    """
    found = []
    for qual, mod in model.named_modules():
        if isinstance(mod, nn.ModuleList) and len(mod) and all(type(c).__name__ in class_names for c in mod):
            found.append((qual, mod))
    if prefer is not None:
        preferred = [m for q, m in found if prefer in q]
        if preferred:
            return preferred[0]
    return found[0][1] if found else None


def valid_from_mask(mask: Tensor | None, x: Tensor) -> Tensor:
    """Real-token mask (B, N) from the 4-D mask (or flex ``BlockMask``) a Hugging Face model passes to its layers.

    Row 0 ([CLS], always real) tells which keys are real; no mask means no padding.
    """
    b, n = x.shape[:2]
    if mask is None:
        return torch.ones(b, n, dtype=torch.bool, device=x.device)
    if isinstance(mask, BlockMask):  # flex_attention: the mask function at query 0 over every key
        zero = torch.zeros((), dtype=torch.long, device=x.device)
        batch = torch.arange(mask.shape[0], device=x.device)[:, None]
        return mask.mask_mod(batch, zero, zero, torch.arange(n, device=x.device)[None, :]).expand(b, n).clone()
    row = mask[:, 0, 0, :] if mask.dim() == 4 else mask
    if row.dtype == torch.bool:
        valid = row
    else:
        valid = row > torch.finfo(row.dtype).min / 2
    return valid.expand(b, n).clone()
