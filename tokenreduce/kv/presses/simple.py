"""Presses that need no attention: random eviction, StreamingLLM, key norm.

- StreamingLLM: G. Xiao, Y. Tian, B. Chen, S. Han, M. Lewis, "Efficient Streaming Language Models
  with Attention Sinks", ICLR 2024 (arXiv:2309.17453). Keep the first tokens (sinks) + a recent window.
- Key norm: A. Devoto, Y. Zhao, S. Scardapane, P. Minervini, "A Simple and Effective L2 Norm-Based
  Strategy for KV Cache Compression", EMNLP 2024 (arXiv:2406.11430). Low key norm = high attention.
- Random: the baseline every press must beat (seeded, so runs are reproducible).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..select import row_noise
from .base import LayerView, Press, register


@register("random")
@dataclass(frozen=True)
class RandomPress(Press):
    seed: int = 0

    def score(self, view: LayerView) -> Tensor:
        return row_noise(view.valid, (view.n_kv_heads,), self.seed * 1000 + view.layer)


@register("streaming_llm")
@dataclass(frozen=True)
class StreamingLLMPress(Press):
    sinks: int = 4

    def score(self, view: LayerView) -> Tensor:
        pos = torch.arange(view.keys.shape[2], device=view.keys.device, dtype=torch.float32)
        return pos.expand(view.keys.shape[:3])


@register("key_norm")
@dataclass(frozen=True)
class KeyNormPress(Press):
    def score(self, view: LayerView) -> Tensor:
        return -view.keys.float().norm(dim=-1)
