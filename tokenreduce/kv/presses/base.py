"""Press base class and its capability types, the per-layer view a press scores, and the registry by name.

A press is a small frozen dataclass: a ``score`` for every cached key of one layer (higher = keep)
plus budget parameters. It holds no runtime state, so one press object serves many models and
threads. Selection, storage and masking are shared (:mod:`tokenreduce.kv.select`,
:mod:`tokenreduce.kv.hooks`), so a press is only its scoring rule (kvpress's design). What else a
press does (ragged budgets, decode-time compression, mixed-precision storage, a second pass) is
declared by the capability types below and checked with ``isinstance``, never probed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, ClassVar, Protocol

from torch import Tensor, nn
from transformers.cache_utils import DynamicLayer

from ...registry import Registry, check_field_types, check_range
from ...spec import parse_spec
from .. import scoring


@dataclass
class LayerView:
    """What a press may look at in one attention layer right after prefill."""

    module: nn.Module  # the attention module (q_proj, head_dim, scaling, ...)
    layer: int
    n_layers: int
    hidden: Tensor  # (B, q, C) inputs of this forward's queries (the last q of the N cached tokens)
    cos: Tensor  # (B, q, D) RoPE of those positions, exactly as the model computed it
    sin: Tensor
    keys: Tensor  # (B, Hkv, N, D) cached keys (RoPE applied)
    values: Tensor
    valid: Tensor  # (B, N) bool: real tokens (False = padding / filler)
    head_valid: Tensor | None = None  # (B, Hkv, N) bool: each KV head's real entries (a ragged layer pressed again)

    @property
    def key_valid(self) -> Tensor:
        """The real entries each KV head attends to: ``head_valid`` where given, else ``valid``."""
        return self.valid if self.head_valid is None else self.head_valid & self.valid[:, None, :]

    @property
    def n_kv_heads(self) -> int:
        return self.keys.shape[1]

    def window_attention(self, window: int) -> Tensor:
        """Attention (B, H, w, N) of the last ``window`` queries, recomputed (no eager attention needed)."""
        w = min(window, self.hidden.shape[1])
        q = scoring.window_queries(self.module, self.hidden[:, -w:], self.cos[:, -w:], self.sin[:, -w:])
        return scoring.window_attention(q, self.keys, self.module.scaling, self.key_valid)

    @cached_property
    def column_mass(self) -> Tensor:
        """Attention each key received from all queries of this forward (B, H, N), chunked."""
        return scoring.column_mass(self.module, self.hidden, self.cos, self.sin, self.keys, self.key_valid)


@dataclass(frozen=True)
class Press:
    """``keep``: fraction of the prompt's KV entries kept in every layer and head (1.0 = no compression).

    ``sinks``/``recent``: first/last real tokens that are always kept (attention sinks, local window).

    What a press can do is declared by its type, never probed: :class:`ScoringPress` (scores one layer's
    entries), :class:`RaggedPress` (budgets differ between heads or layers), :class:`DecodeTimePress`
    (compresses during decoding), :class:`MixedPrecisionPress` (stores entries in its own layer type),
    :class:`ReconstructionPress` (scored by a second pass over the context), :class:`ChannelPress` (also
    prunes key channels), :class:`MergingPress` (merges evicted entries into kept ones).
    """

    keep: float = 1.0
    sinks: int = 0
    recent: int = 0

    name: ClassVar[str] = ""
    query_aware: ClassVar[bool] = False  # scores depend on the last queries (put the question in the window)
    needs_eager: ClassVar[bool] = False  # True if the press needs materialized attention weights
    keep_optional: ClassVar[bool] = False  # saves memory without ``keep`` (quantization, decode-time budgets)

    def __post_init__(self) -> None:
        check_field_types(self, self.name)
        check_range(self.name, "keep", self.keep, 0.0, 1.0, low_open=True, hint=" (fraction of KV entries kept)")
        for f in ("sinks", "recent"):
            if getattr(self, f) < 0:
                raise ValueError(f"{self.name}: {f} must be a non-negative int, got {getattr(self, f)!r}")

    @property
    def ragged(self) -> bool:
        """True if budgets differ between layers or heads (ragged storage); see :class:`RaggedPress`."""
        return False

    def layer_keep(self, layer: int, n_layers: int) -> float:
        """Fraction kept in ``layer`` (constant; PyramidKV overrides)."""
        return float(self.keep)

    def check_model(self, model: nn.Module) -> None:
        """Raise ValueError if this press (or a press it holds, e.g. its scorer) cannot run on ``model``
        (called before any compute)."""
        if self.needs_eager and model.config._attn_implementation != "eager":
            raise ValueError(f"{self.name} needs eager attention: load the model with attn_implementation='eager'")
        for f in fields(self):
            inner = getattr(self, f.name)
            if isinstance(inner, Press):
                inner.check_model(model)


class Shape(Protocol):
    """The decoder sizes a press's cost needs (``tokenreduce.vlm.flops.DecoderShape`` is one)."""

    hidden: int
    heads: int
    kv_heads: int
    head_dim: int


def window_macs(shape: Shape, window: int, n: int) -> int:
    """MACs of recomputing the last ``window`` queries (``q_proj``) and their logits against ``n`` keys (all heads)."""
    return window * shape.hidden * shape.heads * shape.head_dim + window * n * shape.heads * shape.head_dim


class ScoringPress(Press):
    """A press that scores every cached entry of one layer from a :class:`LayerView` (higher = keep).

    Only scoring presses run inside :func:`tokenreduce.kv.apply_press`; a plain one (no other capability
    below) can also score for another press (``AdaKV(scorer=SnapKV())``)."""

    def score(self, view: LayerView) -> Tensor:  # pragma: no cover - abstract
        """Importance of each cached entry, (B, Hkv, N); higher is kept."""
        raise NotImplementedError

    def scoring_macs(self, shape: Shape, n: int) -> int:
        """Multiply-accumulates the press adds to one row's prefill of ``n`` tokens in one layer: its matmuls
        as executed (``FlopCounterMode`` counts twice this); softmax, norms, pooling, top-k and the other
        elementwise work are not counted. Each press declares its own; one that does not says so."""
        raise NotImplementedError(f"{self.name} declares no scoring cost")


class RaggedPress(Press):
    """Budgets that differ between KV heads or layers: the kept entries are stored per (sequence, head)
    (:mod:`tokenreduce.kv.ragged`). ``min_share`` (a field of each subclass) is the floor per head (and
    layer) as a share of an even split (1.0 = equal heads)."""

    min_share: float

    def __post_init__(self) -> None:
        super().__post_init__()
        check_range(self.name, "min_share", self.min_share, 0.0, 1.0)

    @property
    def ragged(self) -> bool:
        return True


class DecodeTimePress(ScoringPress):
    """Also compresses during decoding: before each new token, :meth:`decode_step` may name a press and
    per-row entry budgets to compress to."""

    def decode_step(self, counts: Tensor) -> tuple[ScoringPress, Tensor] | None:  # pragma: no cover - abstract
        """The scoring press and per-row entry budgets (B,) to compress to before feeding one more token,
        given each row's real entries ``counts`` (B,), or None (not now)."""
        raise NotImplementedError


class MixedPrecisionPress(Press):
    """Stores a layer's kept entries in its own cache layer type (e.g. salient entries in full precision,
    the rest quantized) instead of plain dense tensors."""

    def build_layer(self, keys: Tensor, values: Tensor, scores: Tensor, valid: Tensor) -> DynamicLayer:
        """The storage layer for kept entries (B, Hkv, L, D); ``scores`` (B, Hkv, L) are their scores,
        ``valid`` (B, L) marks real ones."""
        raise NotImplementedError  # pragma: no cover - abstract


class ChannelPress(Press):
    """Also prunes key channels (ThinK): after the entries are kept, :meth:`channel_layer` may store the
    layer's keys with fewer channels in its own cache layer type (real bytes saved)."""

    def channel_layer(self, view: LayerView, keys: Tensor, values: Tensor) -> DynamicLayer | None:
        """The storage layer for the kept entries ``keys``/``values`` (B, Hkv, L, D) with channels chosen from
        ``view`` (the layer before eviction), or None (nothing pruned)."""
        raise NotImplementedError  # pragma: no cover - abstract


class MergingPress(Press):
    """Merges the entries it evicts into the ones it keeps (CaM, KVMerger): after the selection,
    :meth:`merge` returns the kept entries' keys and values with the evicted ones folded in, so the cache
    holds exactly what plain eviction would (the same entries, the same bytes)."""

    def merge(self, view: LayerView, kept: Tensor, prefix_mask: Tensor) -> tuple[Tensor, Tensor]:
        """Keys and values (B, Hkv, L, D) for the selected entries ``kept`` (B, Hkv, L) indices into the view's
        N entries; ``prefix_mask`` (B, L) is False for a row's filler slots."""
        raise NotImplementedError  # pragma: no cover - abstract


class ReconstructionPress(Press):
    """Scored by a second pass of the whole model over the context (KVzip), not from one layer's view:
    it runs in :func:`tokenreduce.kv.generate` / ``generate_ids`` and the benchmark, not inside
    ``apply_press``/``model.generate``. ``prompt`` is put before the repeated context."""

    prompt: str


def register(name: str) -> Callable[[type[Press]], type[Press]]:
    """Class decorator: make a press available by ``name``."""
    return REGISTRY.register(name)


def presses() -> list[str]:
    """Names of all registered presses."""
    return REGISTRY.names()


def make_press(press: str | Press, **params: Any) -> Press:
    """A press from a name and keyword parameters, validated before any compute.

    By name, an eviction press needs ``keep``: without it, it would keep every entry (a silent no-op).
    Press objects built directly (e.g. a scorer inside ``AdaKV(scorer=SnapKV())``) take the default."""
    made = REGISTRY.make(press, **params)
    if isinstance(press, str) and "keep" not in params and not made.keep_optional:
        raise ValueError(f"{press}: give keep (the fraction of KV entries kept, in (0, 1]); "
                         "without it nothing is compressed")
    return made


def parse_press(spec: str, keep: float) -> Press:
    """A press from ``"name"`` or ``"name:param=value,param=value"`` (the one spec grammar,
    :func:`tokenreduce.spec.parse_spec`; ``:`` between pairs works too); a ``keep`` in the spec
    overrides the one given."""
    name, params = parse_spec(spec)
    params.setdefault("keep", keep)
    return make_press(name, **params)


def label(press: Press) -> str:
    """The press's name plus its non-default parameters other than ``keep``, e.g. ``snapkv(kernel=11)``.

    A press held in a field (a scorer) shows as ``scorer=label``; when it is that field's default press
    (named by the field's default), its own changed parameters show inline, as a spec would give them:
    ``adakv(kernel=11)`` is AdaKV over SnapKV(kernel=11)."""
    return f"{press.name}({','.join(_changed(press))})" if _changed(press) else press.name


def _changed(obj: Press) -> list[str]:
    """``name=value`` for each field other than ``keep`` that differs from its default (nested presses inline)."""
    out = []
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name == "keep" or value == f.default:
            continue
        if isinstance(value, Press):
            out += _changed(value) if value.name == f.default else [f"{f.name}={label(value)}"]
        else:
            out.append(f"{f.name}={value}")
    return out


REGISTRY: Registry[Press] = Registry("press", Press)
