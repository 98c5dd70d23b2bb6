"""Press base class, the per-layer view a press scores, and the registry of presses by name.

A press is a small frozen dataclass: a ``score`` for every cached key of one layer (higher = keep)
plus budget parameters. It holds no runtime state, so one press object serves many models and
threads. Selection, storage and masking are shared (:mod:`tokenreduce.kv.select`,
:mod:`tokenreduce.kv.hooks`), so a press is only its scoring rule (kvpress's design).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, ClassVar

from torch import Tensor, nn

from ...registry import Registry, check_field_types, check_range
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

    @property
    def n_kv_heads(self) -> int:
        return self.keys.shape[1]

    def window_attention(self, window: int) -> Tensor:
        """Attention (B, H, w, N) of the last ``window`` queries, recomputed (no eager attention needed)."""
        w = min(window, self.hidden.shape[1])
        q = scoring.window_queries(self.module, self.hidden[:, -w:], self.cos[:, -w:], self.sin[:, -w:])
        return scoring.window_attention(q, self.keys, self.module.scaling, self.valid)

    @cached_property
    def column_mass(self) -> Tensor:
        """Attention each key received from all queries of this forward (B, H, N), chunked."""
        return scoring.column_mass(self.module, self.hidden, self.cos, self.sin, self.keys, self.valid)


@dataclass(frozen=True)
class Press:
    """``keep``: fraction of the prompt's KV entries kept in every layer and head (1.0 = no compression).

    ``sinks``/``recent``: first/last real tokens that are always kept (attention sinks, local window).
    """

    keep: float = 1.0
    sinks: int = 0
    recent: int = 0

    name: ClassVar[str] = ""
    query_aware: ClassVar[bool] = False  # scores depend on the last queries (put the question in the window)
    needs_eager: ClassVar[bool] = False  # True if the press needs materialized attention weights
    decodes: ClassVar[bool] = False  # True if the press also compresses during decoding (``decode_step``)

    def __post_init__(self) -> None:
        check_field_types(self, self.name)
        check_range(self.name, "keep", self.keep, 0.0, 1.0, low_open=True, hint=" (fraction of KV entries kept)")
        for f in ("sinks", "recent"):
            if getattr(self, f) < 0:
                raise ValueError(f"{self.name}: {f} must be a non-negative int, got {getattr(self, f)!r}")

    def score(self, view: LayerView) -> Tensor:  # pragma: no cover - abstract
        """Importance of each cached entry, (B, Hkv, N); higher is kept."""
        raise NotImplementedError

    def decode_step(self, counts: Tensor) -> tuple[Press, Tensor] | None:
        """For presses that ``decodes``: the press and per-row entry budgets (B,) to compress to before
        feeding one more token, given each row's real entries ``counts`` (B,), or None (not now)."""
        return None

    def layer_keep(self, layer: int, n_layers: int) -> float:
        """Fraction kept in ``layer`` (constant; PyramidKV overrides)."""
        return float(self.keep)

    def check_model(self, model: nn.Module) -> None:
        """Raise ValueError if this press cannot run on ``model`` (called before any compute)."""
        if self.needs_eager and model.config._attn_implementation != "eager":
            raise ValueError(f"{self.name} needs eager attention: load the model with attn_implementation='eager'")

    def build_layer(self, keys: Tensor, values: Tensor, scores: Tensor, valid: Tensor) -> Any:
        """Custom storage for a layer's kept entries (B, Hkv, L, D) (None = plain dense tensors).

        ``scores`` (B, Hkv, L) are the kept entries' scores, ``valid`` (B, L) marks real ones."""
        return None

    @property
    def ragged(self) -> bool:
        """True if budgets differ between layers or heads (needs ragged storage)."""
        return False


def check_window(press: Press, window: int, kernel: int | None = None) -> None:
    """An observation window of >= 1 queries and an odd pooling kernel >= 1 (SnapKV's max-pooling keeps
    the length only for odd kernels)."""
    check_range(press.name, "window", window, 1, hint=" (queries in the observation window)")
    if kernel is not None and (kernel < 1 or kernel % 2 == 0):
        raise ValueError(f"{press.name}: kernel must be an odd int >= 1 (1 = no pooling), got {kernel!r}")


def register(name: str) -> Callable[[type[Press]], type[Press]]:
    """Class decorator: make a press available by ``name``."""
    return REGISTRY.register(name)


def presses() -> list[str]:
    """Names of all registered presses."""
    return REGISTRY.names()


def make_press(press: str | Press, **params: Any) -> Press:
    """A press from a name and keyword parameters, validated before any compute."""
    return REGISTRY.make(press, **params)


def parse_press(spec: str, keep: float) -> Press:
    """A press from ``"name"`` or ``"name:param=value:param=value"`` (values parsed as int, float or str);
    a ``keep`` in the spec overrides the one given."""
    name, *pairs = spec.split(":")
    params: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"press spec {spec!r}: expected name:param=value, got {pair!r}")
        params[key] = _value(raw)
    params.setdefault("keep", keep)
    return make_press(name, **params)


def _value(raw: str) -> Any:
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    for cast in (int, float):
        try:
            return cast(raw)
        except ValueError:
            pass
    return raw


def label(press: Press) -> str:
    """The press's name plus its non-default parameters other than ``keep``, e.g. ``snapkv(kernel=11)``."""
    changed = [f"{f.name}={getattr(press, f.name)}" for f in fields(press)
               if f.name != "keep" and getattr(press, f.name) != f.default]
    return f"{press.name}({','.join(changed)})" if changed else press.name


REGISTRY: Registry[Press] = Registry("press", Press)
