"""KVzip: query-agnostic eviction scored by how much a reconstruction of the context attends to each entry.

J.-H. Kim, J. Kim, S. Kwon, J. W. Lee, S. Yun, H. O. Song, "KVzip: Query-Agnostic KV Cache Compression
with Context Reconstruction", arXiv:2505.23416 (2025).

After the context prefill, a prompt asking to repeat the context followed by the context itself is
teacher-forced against the full cache; an entry's score is the largest attention any reconstruction
query of its GQA group gives it. Entries the model needs to reproduce the context are the ones any
later question may need, so one compressed cache serves every question. The scoring pass lives in
:mod:`tokenreduce.kv.kvzip` (it needs the whole model, not one layer's view): a
:class:`ReconstructionPress`, so it cannot run inside ``apply_press`` nor score for another press.
"""

from __future__ import annotations

from dataclasses import dataclass

from .base import RaggedPress, ReconstructionPress, register

BUDGETS = ("global", "head", "layer")
REPEAT_PROMPT = "\n\nRepeat the previous context exactly:\n"


@register("kvzip")
@dataclass(frozen=True)
class KVzip(RaggedPress, ReconstructionPress):
    """``chunk``: context tokens reconstructed per pass (memory O(chunk x N) per head).

    ``budget``: who competes for the kept entries. ``"global"`` (the paper): all layers and KV heads rank
    together, so a layer or head the reconstruction leans on keeps more (ragged storage); ``"head"``:
    the heads of each layer share the layer's budget (AdaKV-style); ``"layer"``: every head keeps the
    same number. ``min_share``: floor per (layer, head) as a share of an even split (global/head).
    ``prompt``: text put before the repeated context (tokenized with the caller's tokenizer; none without one).
    ``window``: also score by the square root of the mean attention of the context's last ``window``
    queries (SnapKV's observation window) and keep the larger score: entries the next tokens read.
    0 = the paper's scores.
    """

    chunk: int = 512
    budget: str = "global"
    window: int = 0
    min_share: float = 0.2
    prompt: str = REPEAT_PROMPT

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.chunk, int) or self.chunk < 1:
            raise ValueError(f"kvzip: chunk must be a positive int, got {self.chunk!r}")
        if not isinstance(self.window, int) or self.window < 0:
            raise ValueError(f"kvzip: window must be a non-negative int, got {self.window!r}")
        if self.budget not in BUDGETS:
            raise ValueError(f"kvzip: budget must be one of {', '.join(BUDGETS)}, got {self.budget!r}")

    @property
    def ragged(self) -> bool:
        return self.budget != "layer"
