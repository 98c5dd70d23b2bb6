"""KVzip: query-agnostic eviction scored by how much a reconstruction of the context attends to each entry.

J.-H. Kim, J. Kim, S. Kwon, J. W. Lee, S. Yun, H. O. Song, "KVzip: Query-Agnostic KV Cache Compression
with Context Reconstruction", arXiv:2505.23416 (2025).

After the context prefill, a prompt asking to repeat the context followed by the context itself is
teacher-forced against the full cache; an entry's score is the largest attention any reconstruction
query of its GQA group gives it. Entries the model needs to reproduce the context are the ones any
later question may need, so one compressed cache serves every question. The scoring pass lives in
:mod:`tokenreduce.kv.kvzip` (it needs the whole model, not one layer's view).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import Tensor

from .base import LayerView, Press, register

REPEAT_PROMPT = "\n\nRepeat the previous context exactly:\n"


@register("kvzip")
@dataclass(frozen=True)
class KVzipPress(Press):
    """``chunk``: context tokens reconstructed per pass (memory O(chunk x N) per head).

    ``headwise``: AdaKV-style budgets shared among a layer's KV heads (ragged storage, floor ``min_share``
    of an even split); otherwise every head keeps the same number of entries.
    ``prompt``: text put before the repeated context (tokenized with the caller's tokenizer; none without one).
    """

    chunk: int = 512
    headwise: bool = False
    min_share: float = 0.2
    prompt: str = REPEAT_PROMPT

    reconstructs: ClassVar[bool] = True  # scored by a second model pass, not from a LayerView

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"kvzip: chunk must be a positive int, got {self.chunk!r}")
        if self.headwise not in (True, False, 0, 1):
            raise ValueError(f"kvzip: headwise must be a bool, got {self.headwise!r}")
        if not 0.0 <= self.min_share <= 1.0:
            raise ValueError(f"kvzip: min_share must be in [0, 1], got {self.min_share!r}")

    def score(self, view: LayerView) -> Tensor:
        raise ValueError("kvzip scores with a reconstruction pass over the whole model; "
                         "use tokenreduce.kv.kvzip.compress_cache or tokenreduce.kv.generate")

    @property
    def ragged(self) -> bool:
        return bool(self.headwise)
