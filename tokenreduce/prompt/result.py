"""The result of one compression: text, keep-mask with character offsets, token counts."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CompressionResult:
    """``text`` is the compressed context; ``keep[i]`` says whether piece i (characters
    ``offsets[i, 0]:offsets[i, 1]`` of ``original``) was kept. Token counts are in ``tokenizer``.
    ``protected_cut``: the one exception to "protected blocks are kept or dropped whole" (the output is never
    empty, so a text that is one protected block larger than the budget comes back as its beginning)."""

    text: str
    original: str
    keep: np.ndarray
    offsets: np.ndarray
    original_tokens: int
    compressed_tokens: int
    target_tokens: int
    tokenizer: str
    method: str
    over_budget: bool = False
    reordered: bool = False
    protected_cut: bool = False  # a protected block alone exceeded the budget, nothing else fitted: its prefix kept
    granularity: str = "sentence"  # "sentence": kept sentences are whole; "token": trimmed piece by piece
    # nothing fitted under the granularity's rules (a whole sentence; at token level, words with their sentence's
    # protected spans): the best sentence was trimmed instead, so it is not whole or lost a protected span
    sentence_cut: bool = False
    sentences: np.ndarray | None = None  # (P,) sentence id of each piece (non-decreasing)

    @property
    def ratio(self) -> float:
        """Compression ratio original / compressed tokens (4.0 means 4x)."""
        return self.original_tokens / max(self.compressed_tokens, 1)

    @property
    def rate(self) -> float:
        """Fraction of tokens kept."""
        return self.compressed_tokens / max(self.original_tokens, 1)

    def kept_spans(self) -> list[tuple[int, int]]:
        """Kept character ranges of ``original``, merged, in original order."""
        out: list[tuple[int, int]] = []
        for (s, e), k in zip(self.offsets.tolist(), self.keep.tolist()):
            if not k:
                continue
            if out and out[-1][1] == s:
                out[-1] = (out[-1][0], e)
            else:
                out.append((s, e))
        return out

    def char_mask(self) -> np.ndarray:
        """(len(original),) bool: which characters of the original were kept."""
        m = np.zeros(len(self.original), dtype=bool)
        for s, e in self.kept_spans():
            m[s:e] = True
        return m

    def kept_sentences(self) -> tuple[int, int]:
        """(sentences with anything kept, of those the ones kept entirely)."""
        if self.sentences is None or not len(self.keep):
            return 0, 0
        n = int(self.sentences[-1]) + 1
        kept = np.bincount(self.sentences, weights=self.keep, minlength=n)
        total = np.bincount(self.sentences, minlength=n)
        return int((kept > 0).sum()), int(((kept > 0) & (kept == total)).sum())

    def stats(self) -> dict[str, object]:
        """What was done and what was achieved: ``ratio``/``rate`` are measured on the output (with whole
        sentences they land up to one sentence short of ``target_ratio``), ``granularity`` says whether kept
        sentences are whole, ``sentence_cut`` whether the one exception (no sentence fitted) happened."""
        kept, whole = self.kept_sentences()
        return {
            "method": self.method,
            "tokenizer": self.tokenizer,
            "granularity": self.granularity,
            "original_tokens": self.original_tokens,
            "target_tokens": self.target_tokens,
            "compressed_tokens": self.compressed_tokens,
            "ratio": round(self.ratio, 3),
            "target_ratio": round(self.original_tokens / max(self.target_tokens, 1), 3),
            "rate": round(self.rate, 4),
            "over_budget": self.over_budget,
            "sentence_cut": self.sentence_cut,
            "sentences_kept": kept,
            "sentences_whole": whole,
        }
