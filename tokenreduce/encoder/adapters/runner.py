"""The generic reduced block: attention half, reduce, MLP half, with per-call token state.

Each patched block's ``forward`` is replaced (as an instance attribute, so ``unpatch`` restores
the class method bit for bit). State that must flow from block to block within one forward call
(token sizes, the source map) lives in a ``ContextVar`` keyed by the patch: it is created by the
first block and discarded by the last, so concurrent threads and different patched models never
see each other's state, and nothing is stored on the modules.

Under ``torch.compile`` the state goes through a dict on the patch handle instead (dynamo cannot
trace ``ContextVar.set``; in a compiled graph it is only a tracing-time carrier, created and
emptied within the same graph). Without padding, every row has the same budget, which is then
computed in Python from the input's shape: no tensor value is read, shapes are static, and the
model compiles to one graph and exports to ONNX.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ...core.assign import apply_assignment, attention_bias, gather_assignment, restore, update_sources
from ...core.attention import query_rows
from ...core.scoring import attention_stats_blockwise
from ..methods.base import LayerTensors, Method
from .base import AttnOut, Family, valid_from_mask
from .hf_attention import STATS_REQUEST, StatsRequest

_STATE: ContextVar[dict[int, TokenState] | None] = ContextVar("tokenreduce_state", default=None)
_RECORD: ContextVar[list[SourceRecord] | None] = ContextVar("tokenreduce_record", default=None)
# per call, the tokens patched forwards must not reduce (B, N): set by a pin= patch's pre-hook (see _pin_front)
_PINNED: ContextVar[Tensor | None] = ContextVar("tokenreduce_pinned", default=None)


@dataclass(frozen=True)
class SourceRecord:
    """The source map after one reducing layer (see :func:`record_sources`)."""

    layer: int
    src: Tensor  # (B, N0) original token -> slot after this layer, -1 = dropped
    sizes: Tensor  # (B, n) original tokens per slot, 0 = padding


@contextmanager
def record_sources() -> Iterator[list[SourceRecord]]:
    """Collect the source map after every reducing layer of patched forwards run inside the block.

    ``with record_sources() as recs: model(x)`` leaves one :class:`SourceRecord` per reducing layer,
    in call order (for visualization). The list lives in a ContextVar, so nothing is stored on
    modules and other threads record nothing.
    """
    records: list[SourceRecord] = []
    token = _RECORD.set(records)
    try:
        yield records
    finally:
        _RECORD.reset(token)


@dataclass
class TokenState:
    """Per-forward-call state of one patched model."""

    sizes: Tensor  # (B, N) float, 0 = padding
    src: Tensor  # (B, N0) original token -> current slot, -1 = dropped
    removals: Tensor | list[int]  # (L, B) tokens each layer removes from each row, or per layer for all rows
    n0: Tensor | None = None  # (B,) unprotected real tokens at the start (nominal targets for adaptive methods)
    pristine: bool = True  # no reduction yet: the model's own mask is still right
    protected: int = 0  # leading slots never reduced (the patch's count; more when tokens are pinned per row)
    pinned: Tensor | None = None  # (B,) each row's pinned tokens where some row's fall short of ``protected``


@dataclass(eq=False)
class PatchHandle:
    """Everything ``unpatch`` needs, plus the immutable configuration of the patch."""

    family: Family
    method: Method
    layers: nn.ModuleList
    protected: int
    restore_length: bool
    saved_forwards: list[Any] = field(default_factory=list)
    hooks: list[Any] = field(default_factory=list)  # removable hooks the patch registered (pin=...)
    traced: dict[int, TokenState] = field(default_factory=dict)  # state carrier while dynamo traces

    @property
    def key(self) -> int:
        return id(self)


def _start(h: PatchHandle, x: Tensor, mask: Tensor | None) -> TokenState:
    unpadded = mask is None or not getattr(h.family, "padded", True)
    valid = valid_from_mask(None if unpadded else mask, x)
    b, n = valid.shape
    pos = torch.arange(n, device=x.device)
    budget, cap = h.method.budget(), h.method.cap
    n0 = (valid & (pos >= h.protected)).sum(1)
    if unpadded:  # one budget for all rows, from the shape alone (static shapes)
        removals: Tensor | list[int] = budget.removals_static(max(n - h.protected, 0), len(h.layers), cap=cap)
    else:
        removals = budget.removals(n0, len(h.layers), cap=cap)
    src = torch.where(valid, pos.expand(b, n), -1)
    return TokenState(sizes=valid.to(x.dtype), src=src, removals=removals, n0=n0, protected=h.protected)


def _pin_front(h: PatchHandle, st: TokenState, x: Tensor, pins: Tensor) -> Tensor:
    """Move each row's pinned tokens (plus the leading protected ones) to the front, padded to the batch's
    largest pinned count ``P``, and protect ``P`` slots: every method then leaves them alone.

    A one-to-one move before block 0 (positions travel with the tokens in absolute-position families, and
    the source map records it, so outputs come back in the original order). The rest of a row keeps its
    order and starts at slot ``P`` whatever the batch, so a row's result does not depend on its batch;
    budgets are recomputed over each row's unpinned tokens. A reduction compacts padding away, so rows
    with fewer than ``P`` pinned tokens are padded back after every reducing layer (``_repin``).
    """
    valid = st.sizes > 0
    pos = torch.arange(valid.shape[1], device=x.device)
    pins = (pins.to(device=x.device, dtype=torch.bool) | (pos < h.protected)) & valid
    counts = pins.sum(1)
    x = _to_front(st, x, pins)
    st.pristine, st.protected, st.n0 = False, int(counts.max()), (valid & ~pins).sum(1)
    st.pinned = counts if bool((counts < st.protected).any()) else None
    st.removals = h.method.budget().removals(st.n0, len(h.layers), cap=h.method.cap)
    return x


def _to_front(st: TokenState, x: Tensor, pins: Tensor) -> Tensor:
    """One-to-one move: each row's ``pins`` to slots 0.., padded to the largest count, then its other real
    tokens in order; updates ``st`` (sizes, sources)."""
    valid = st.sizes > 0
    rest = valid & ~pins
    p = int(pins.sum(1).max())
    dst = torch.where(pins, pins.cumsum(1) - 1, torch.where(rest, p + rest.cumsum(1) - 1, -1))
    n_out = p + int(rest.sum(1).max())
    st.sizes, st.src = gather_assignment(st.sizes, dst, n_out), update_sources(st.src, dst)
    return gather_assignment(x, dst, n_out)


def _repin(st: TokenState, x: Tensor) -> Tensor:
    """After a reduction (which keeps protected tokens first, in order, and padding last), pad each row's
    pinned tokens back to ``st.protected`` slots, so unpinned tokens keep starting at the same slot."""
    if st.pinned is None:
        return x
    pos = torch.arange(x.shape[1], device=x.device)
    return _to_front(st, x, (pos < st.pinned[:, None]) & (st.sizes > 0))


def _states(h: PatchHandle) -> dict[int, TokenState]:
    return h.traced if torch.compiler.is_compiling() else dict(_STATE.get() or {})


def _save(h: PatchHandle, states: dict[int, TokenState]) -> None:
    if not torch.compiler.is_compiling():
        _STATE.set(states)


def _reduces(r: Tensor | int) -> bool:
    return r > 0 if isinstance(r, int) else bool((r > 0).any())


def _rows(q: Tensor, k: Tensor, scaling: float, sizes: Tensor, prop: bool) -> Tensor:
    """Softmax rows of the queries ``q`` over every key, with padding masked and, under proportional
    attention, log(size) added to each key (exactly the bias the fused kernel gets)."""
    log_sizes = sizes.float().clamp(min=1e-6).log() if prop else None
    return query_rows(q, k, scaling, key_mask=sizes > 0, log_sizes=log_sizes)


def _cls_attention(q: Tensor, k: Tensor, scaling: float, sizes: Tensor, prop: bool) -> Tensor:
    """Attention row of the first token, averaged over heads: O(N·d), no N×N matrix."""
    return _rows(q[:, :, :1], k, scaling, sizes, prop)[:, :, 0].mean(1)


NEEDS = frozenset({"keys", "cls_attn", "cls_attn_heads", "values", "attn", "qk", "attn_stat", "target"})


def _cls_attention_heads(q: Tensor, k: Tensor, scaling: float, sizes: Tensor, prop: bool) -> Tensor:
    """Attention row of the first token per head (B, H, N): O(N·d), no N×N matrix."""
    return _rows(q[:, :, :1], k, scaling, sizes, prop)[:, :, 0]


def _full_attention(q: Tensor, k: Tensor, scaling: float, sizes: Tensor, prop: bool) -> Tensor:
    """Explicit attention probabilities (B, H, N, N), recomputed next to the fused kernel for methods
    that need every row (attention received, PageRank); costs one extra Q·Kᵀ, counted in FLOPs."""
    return _rows(q, k, scaling, sizes, prop)


def reduced_forward(
    h: PatchHandle, index: int, layer: nn.Module, x: Tensor, mask: Tensor | None = None, *args: Any, **kwargs: Any
) -> Tensor:
    """Forward of block ``index`` of a patched model."""
    if mask is None and "attn_mask" in kwargs:  # timm passes the mask by keyword
        mask = kwargs.pop("attn_mask")
    if kwargs.get("is_causal"):
        raise ValueError("tokenreduce: causal attention cannot be reduced by encoder methods")
    states = _states(h)
    if index == 0:
        states[h.key] = _start(h, x, mask)
        if torch.compiler.is_compiling() and h.hooks:  # dynamo does not trace the ContextVar the pins live in
            raise RuntimeError("tokenreduce: pin='first_segment' cannot run under torch.compile")
        pins = None if torch.compiler.is_compiling() else _PINNED.get()
        if pins is not None and any(_reduces(r) for r in states[h.key].removals):
            x = _pin_front(h, states[h.key], x, pins)
        _save(h, states)
    if h.key not in states:
        raise RuntimeError("tokenreduce: blocks ran out of order (block 0 must run first in each forward)")
    st = states[h.key]
    last = index == len(h.layers) - 1
    r = st.removals[index]
    m = h.method
    if st.pristine and not _reduces(r):
        out = (
            h.saved_forwards[index](x, mask, *args, **kwargs)
            if h.saved_forwards[index]
            else type(layer).forward(layer, x, mask, *args, **kwargs)
        )
        if last:
            _finish(h)
        return out

    bias = mask if st.pristine else _key_bias(h, st, x.dtype)
    req = _stats_request(h, st, bias) if _reduces(r) else None
    if req is None:
        att = h.family.attention(layer, x, bias)
    else:
        token = STATS_REQUEST.set(req)
        try:
            att = h.family.attention(layer, x, bias)
        finally:
            STATS_REQUEST.reset(token)
    x = att.x
    if _reduces(r):
        x = _repin(st, _reduce(h, st, att, r, index, None if req is None else req.stats))
        recording = None if torch.compiler.is_compiling() else _RECORD.get()
        if recording is not None:
            recording.append(SourceRecord(index, st.src.clone(), st.sizes.clone()))
    del att  # free queries/keys/values before the MLP: this is where peak memory is reached
    x = h.family.mlp(layer, x)
    if last:
        _finish(h)
        if h.restore_length:
            x = restore(x, st.src, _survivor_mean(x, st.sizes) if m.drops else None)
    return x


def _key_bias(h: PatchHandle, st: TokenState, dtype: torch.dtype) -> Tensor | None:
    """The additive key bias of a reduced block (log sizes, padding), or None where it would be all zeros:
    no proportional attention and no padding in an image family. Without a float mask SDPA may pick its
    flash kernel (one read of the sizes decides; under torch.compile the zero mask stays, reading nothing)."""
    prop = h.method.proportional_attention
    if (
        not prop
        and not getattr(h.family, "padded", True)
        and not torch.compiler.is_compiling()
        and bool((st.sizes > 0).all())
    ):
        return None
    return attention_bias(st.sizes, prop, dtype)


def _stats_request(h: PatchHandle, st: TokenState, bias: Tensor | None) -> StatsRequest | None:
    """For a method that needs "attn_stat", ask the block's attention to compute its statistic from its
    own probabilities (served by the eager/SDPA path of Hugging Face families; see hf_attention)."""
    stat = h.method.attention_stat() if "attn_stat" in h.method.needs else None
    if stat is None or torch.compiler.is_compiling():  # dynamo does not trace ContextVar.set
        return None
    return StatsRequest(stat, st.sizes > 0, _log_sizes(st, h.method.proportional_attention), bias)


def _log_sizes(st: TokenState, prop: bool) -> Tensor | None:
    return st.sizes.float().clamp(min=1e-6).log() if prop else None


def _reduce(
    h: PatchHandle, st: TokenState, att: AttnOut, r: Tensor | int, index: int, stats: Tensor | None = None
) -> Tensor:
    """Plan and apply this layer's reduction; updates ``st`` (sizes, sources) and returns new x."""
    m = h.method
    x, q, k, scaling = att.x, att.q, att.k, att.scaling
    n_out = None
    if isinstance(r, int):  # static budget: every row removes exactly r
        n_out = x.shape[1] - r
        r = torch.full((x.shape[0],), r, dtype=torch.int64, device=x.device)
    t = LayerTensors(
        x=x,
        sizes=st.sizes,
        layer=index,
        protected=st.protected,
        keys=k.mean(1) if "keys" in m.needs else None,
        cls_attn=_cls_attention(q, k, scaling, st.sizes, m.proportional_attention) if "cls_attn" in m.needs else None,
        n_out=n_out,
        **_extras(h, st, att, index, stats),
    )
    plan = m.plan(t, r)
    st.src, st.pristine = update_sources(st.src, plan.dst), False
    if plan.one_to_one:
        st.sizes = gather_assignment(st.sizes, plan.dst, plan.n_out)
        return gather_assignment(x, plan.dst, plan.n_out)
    x, st.sizes = apply_assignment(x, st.sizes, plan.dst, plan.n_out, plan.weights)
    return x


def _extras(h: PatchHandle, st: TokenState, att: AttnOut, index: int, stats: Tensor | None) -> dict[str, Any]:
    """The optional LayerTensors fields a method's ``needs`` ask for (nothing is computed otherwise);
    ``stats``: the method's attention statistic if the block's attention already computed it."""
    m, prop = h.method, h.method.proportional_attention
    out: dict[str, Any] = {"num_layers": len(h.layers)}
    if "cls_attn_heads" in m.needs:
        out["cls_attn_heads"] = _cls_attention_heads(att.q, att.k, att.scaling, st.sizes, prop)
    if "values" in m.needs:
        out["values"] = att.v
    if "attn" in m.needs:
        out["attn"] = _full_attention(att.q, att.k, att.scaling, st.sizes, prop)
    if "qk" in m.needs:  # per-head queries and keys, for methods that build attention blockwise
        out.update(queries=att.q, keys_heads=att.k, scaling=att.scaling, key_bias=_log_sizes(st, prop))
    if "attn_stat" in m.needs:  # recomputed blockwise next to the kernel where the attention did not serve it
        out["attn_stat"] = stats if stats is not None else attention_stats_blockwise(
            att.q, att.k, att.scaling, st.sizes > 0, m.attention_stat(), _log_sizes(st, prop))[0]
    if "target" in m.needs:
        done = st.removals[: index + 1]
        out["target"] = st.n0 - (sum(done) if isinstance(done, list) else done.sum(0))
    return out


def _survivor_mean(x: Tensor, sizes: Tensor) -> Tensor:
    """Size-weighted mean of each row's final tokens, broadcast to (B, 1, C).

    Pruned tokens restore to this value, so mean pooling over the original attention mask equals
    size-weighted pooling over the surviving tokens (what a pruned model means by "the mean").
    """
    w = sizes.to(x.dtype)[..., None]
    return (x * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp(min=1e-6)


def _finish(h: PatchHandle) -> None:
    states = _states(h)
    states.pop(h.key, None)
    _save(h, states)
