"""Token counting in the target model's tokenizer: Hugging Face tokenizers or local tiktoken encodings.

Budgets are counted where they are paid: in the tokenizer of the model that will read the prompt.
``resolve_counter(spec)`` accepts a tiktoken encoding name (``"cl100k_base"``, ...; files looked up
locally, first in the caller's ``tiktoken_dir``, see :mod:`.tiktoken_local`), a local Hugging Face
tokenizer folder, a tokenizer object, or ``None`` for :data:`DEFAULT_TOKENIZER` (cl100k_base when its
file is available, else the method's own tokenizer; the result records which one counted).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .tiktoken_local import ENCODINGS, TiktokenUnavailable, load_encoding

DEFAULT_TOKENIZER = "cl100k_base"


@dataclass(frozen=True)
class TokenCounter:
    """Counts tokens of text (no special tokens added) with one tokenizer; ``name`` says which."""

    name: str
    backend: Any

    def encode(self, text: str) -> list[int]:
        b = self.backend
        if hasattr(b, "encode_ordinary"):  # tiktoken
            return b.encode_ordinary(text)
        return b(text, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]

    def count(self, text: str) -> int:
        return len(self.encode(text)) if text else 0

    def count_many(self, texts: list[str]) -> list[int]:
        b = self.backend
        if not texts:
            return []
        if hasattr(b, "encode_ordinary_batch"):
            return [len(t) for t in b.encode_ordinary_batch(texts)]
        ids = b(texts, add_special_tokens=False, truncation=False, verbose=False)["input_ids"]
        return [len(t) for t in ids]


def _hf_from_folder(path: Path) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def resolve_counter(spec: Any = None, fallback: Any = None, tiktoken_dir: str | Path | None = None) -> TokenCounter:
    """A :class:`TokenCounter` for ``spec`` (see module doc); ``fallback`` is used when ``spec`` is None and
    the default tiktoken file is not available locally. ``tiktoken_dir``: a folder holding
    ``<name>.tiktoken`` rank files, searched first."""
    if isinstance(spec, TokenCounter):
        return spec
    if spec is None:
        try:
            return TokenCounter(DEFAULT_TOKENIZER, load_encoding(DEFAULT_TOKENIZER, tiktoken_dir))
        except TiktokenUnavailable:
            if fallback is None:
                raise
            return resolve_counter(fallback)
    if isinstance(spec, str) and spec in ENCODINGS:
        return TokenCounter(spec, load_encoding(spec, tiktoken_dir))
    if isinstance(spec, (str, Path)):
        path = Path(spec)
        if not path.exists():
            raise ValueError(
                f"tokenizer {str(spec)!r}: not a tiktoken encoding ({', '.join(ENCODINGS)}) and not an existing "
                "local tokenizer folder (nothing is downloaded)"
            )
        return TokenCounter(path.name, _hf_from_folder(path))
    if hasattr(spec, "encode_ordinary"):
        return TokenCounter(getattr(spec, "name", "tiktoken"), spec)
    if callable(spec) and hasattr(spec, "convert_ids_to_tokens"):
        return TokenCounter(getattr(spec, "name_or_path", type(spec).__name__) or type(spec).__name__, spec)
    raise TypeError(f"tokenizer must be a tiktoken name, a local folder or a tokenizer object, got {type(spec)}")
