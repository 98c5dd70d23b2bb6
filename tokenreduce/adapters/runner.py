"""The generic reduced block: attention half, reduce, MLP half, with per-call token state.

Each patched block's ``forward`` is replaced (as an instance attribute, so ``unpatch`` restores
the class method bit for bit). State that must flow from block to block within one forward call
(token sizes, the source map) lives in a ``ContextVar`` keyed by the patch: it is created by the
first block and discarded by the last, so concurrent threads and different patched models never
see each other's state, and nothing is stored on the modules.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..core.assign import apply_assignment, attention_bias, gather_assignment, restore, update_sources
from ..methods.base import LayerTensors, Method
from .base import AttnOut, Family, valid_from_mask

_STATE: ContextVar[dict[int, TokenState] | None] = ContextVar("tokenreduce_state", default=None)


@dataclass
class TokenState:
    """Per-forward-call state of one patched model."""

    sizes: Tensor  # (B, N) float, 0 = padding
    src: Tensor  # (B, N0) original token -> current slot, -1 = dropped
    removals: Tensor  # (L, B) tokens each layer removes from each row
    pristine: bool = True  # no reduction yet: the model's own mask is still right


@dataclass(eq=False)
class PatchHandle:
    """Everything ``unpatch`` needs, plus the immutable configuration of the patch."""

    family: Family
    method: Method
    layers: nn.ModuleList
    protected: int
    restore_length: bool
    saved_forwards: list[Any] = field(default_factory=list)

    @property
    def key(self) -> int:
        return id(self)


def _start(h: PatchHandle, x: Tensor, mask: Tensor | None) -> TokenState:
    valid = valid_from_mask(mask, x)
    b, n = valid.shape
    pos = torch.arange(n, device=x.device)
    n0 = (valid & (pos >= h.protected)).sum(1)
    removals = h.method.budget().removals(n0, len(h.layers), cap=h.method.cap)
    src = torch.where(valid, pos.expand(b, n), -1)
    return TokenState(sizes=valid.to(x.dtype), src=src, removals=removals)


def _cls_attention(q: Tensor, k: Tensor, scaling: float, sizes: Tensor, prop: bool) -> Tensor:
    """Attention row of the first token, averaged over heads: O(N·d), no N×N matrix."""
    logits = (q[:, :, :1].float() @ k.float().transpose(-1, -2)).squeeze(2) * scaling  # (B, H, N)
    logits = logits + attention_bias(sizes, prop, torch.float32)[:, :, 0, :]
    return logits.softmax(-1).mean(1)


def reduced_forward(
    h: PatchHandle, index: int, layer: nn.Module, x: Tensor, mask: Tensor | None = None, *args: Any, **kwargs: Any
) -> Tensor:
    """Forward of block ``index`` of a patched model."""
    if mask is None and "attn_mask" in kwargs:  # timm passes the mask by keyword
        mask = kwargs.pop("attn_mask")
    if kwargs.get("is_causal"):
        raise ValueError("tokenreduce: causal attention cannot be reduced by encoder methods")
    states = _STATE.get()
    if index == 0:
        states = dict(states or {})
        states[h.key] = _start(h, x, mask)
        _STATE.set(states)
    if not states or h.key not in states:
        raise RuntimeError("tokenreduce: blocks ran out of order (block 0 must run first in each forward)")
    st = states[h.key]
    last = index == len(h.layers) - 1
    r = st.removals[index]
    m = h.method
    if st.pristine and not bool((r > 0).any()):
        out = (
            h.saved_forwards[index](x, mask, *args, **kwargs)
            if h.saved_forwards[index]
            else type(layer).forward(layer, x, mask, *args, **kwargs)
        )
        if last:
            _finish(h)
        return out

    bias = mask if st.pristine else attention_bias(st.sizes, m.proportional_attention, x.dtype)
    att = h.family.attention(layer, x, bias)
    x = att.x
    if bool((r > 0).any()):
        x = _reduce(h, st, att, r, index)
    del att  # free queries/keys/values before the MLP: this is where peak memory is reached
    x = h.family.mlp(layer, x)
    if last:
        _finish(h)
        if h.restore_length:
            x = restore(x, st.src, _survivor_mean(x, st.sizes) if m.drops else None)
    return x


def _reduce(h: PatchHandle, st: TokenState, att: AttnOut, r: Tensor, index: int) -> Tensor:
    """Plan and apply this layer's reduction; updates ``st`` (sizes, sources) and returns new x."""
    m = h.method
    x, q, k, scaling = att.x, att.q, att.k, att.scaling
    t = LayerTensors(
        x=x,
        sizes=st.sizes,
        layer=index,
        protected=h.protected,
        keys=k.mean(1) if "keys" in m.needs else None,
        cls_attn=_cls_attention(q, k, scaling, st.sizes, m.proportional_attention) if "cls_attn" in m.needs else None,
    )
    plan = m.plan(t, r)
    st.src, st.pristine = update_sources(st.src, plan.dst), False
    if plan.one_to_one:
        st.sizes = gather_assignment(st.sizes, plan.dst, plan.n_out)
        return gather_assignment(x, plan.dst, plan.n_out)
    x, st.sizes = apply_assignment(x, st.sizes, plan.dst, plan.n_out, plan.weights)
    return x


def _survivor_mean(x: Tensor, sizes: Tensor) -> Tensor:
    """Size-weighted mean of each row's final tokens, broadcast to (B, 1, C).

    Pruned tokens restore to this value, so mean pooling over the original attention mask equals
    size-weighted pooling over the surviving tokens (what a pruned model means by "the mean").
    """
    w = sizes.to(x.dtype)[..., None]
    return (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1e-6)


def _finish(h: PatchHandle) -> None:
    states = dict(_STATE.get() or {})
    states.pop(h.key, None)
    _STATE.set(states)
