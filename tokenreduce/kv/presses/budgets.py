"""Presses that redistribute the budget: per head (AdaKV) and per layer (PyramidKV). Both use ragged storage.

- AdaKV: Y. Feng, J. Lv, Y. Cao, X. Xie, S. K. Zhou, "Ada-KV: Optimizing KV Cache Eviction by Adaptive
  Budget Allocation for Efficient LLM Inference", arXiv:2407.11550 (2024). A layer's budget
  (keep x N x heads) goes to the best-scored entries over *all* its KV heads, each head guaranteed a
  ``min_share`` of an even split (the paper's safeguard).
- PyramidKV: Z. Cai et al., "PyramidKV: Dynamic KV Cache Compression based on Pyramidal Information
  Funneling", arXiv:2406.02069 (2024). Budgets fall linearly with depth, averaging ``keep``.

Both score with SnapKV's observation window (``window``, ``kernel``) unless another ``scorer`` is named.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .base import LayerView, Press, check_window, make_press, register


@dataclass(frozen=True)
class _Budgeted(Press):
    scorer: str = "snapkv"
    window: int = 64
    kernel: int = 5
    min_share: float = 1.0  # per-head floor as a share of an even split (1.0 = equal heads)

    query_aware = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_window(self, self.window, self.kernel)
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(f"{self.name}: min_share must be in [0, 1], got {self.min_share!r}")
        if self.scorer in ("adakv", "pyramidkv"):
            raise ValueError(f"{self.name}: scorer must be a dense press, got {self.scorer!r}")
        self._inner()  # validates the scorer name

    def _inner(self) -> Press:
        """The dense scorer, with this press's window/kernel where the scorer has them."""
        params = {"snapkv": {"window": self.window, "kernel": self.kernel}, "keyformer": {"window": self.window}}
        return make_press(self.scorer, keep=self.keep, **params.get(self.scorer, {}))

    def score(self, view: LayerView) -> Tensor:
        return self._inner().score(view)

    @property
    def ragged(self) -> bool:
        return True


@register("adakv")
@dataclass(frozen=True)
class AdaKVPress(_Budgeted):
    min_share: float = 0.2


@register("pyramidkv")
@dataclass(frozen=True)
class PyramidKVPress(_Budgeted):
    slope: float = 0.5  # first layer keeps keep*(1+slope), last keep*(1-slope)

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 <= self.slope < 1.0:
            raise ValueError(f"pyramidkv: slope must be in [0, 1), got {self.slope!r}")

    def layer_keep(self, layer: int, n_layers: int) -> float:
        frac = 0.5 if n_layers == 1 else layer / (n_layers - 1)
        keep = float(self.keep)
        slope = min(self.slope, (1.0 - keep) / keep)  # never above 1: the mean stays `keep`
        return keep * (1.0 + slope * (1.0 - 2.0 * frac))
