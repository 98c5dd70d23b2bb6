"""``llmlingua2``: LLMLingua-2-compatible compression: a token classifier predicts, per token, the probability of
keeping it; words are scored by the mean over their tokens and kept under one global budget.

Pan et al., "LLMLingua-2: Data Distillation for Efficient and Faithful Task-Agnostic Prompt
Compression", Findings of ACL 2024 (arXiv:2403.12968). Loads ``microsoft/llmlingua-2-*`` checkpoints
(XLM-RoBERTa or multilingual BERT ``*ForTokenClassification``, label 1 = keep) from a local folder.

The text is tokenized once with offsets; tokens are grouped into chunks of at most ``chunk_tokens``
*including* the model's own special tokens (``<s> ... </s>`` for XLM-R, ``[CLS] ... [SEP]`` for BERT,
read from the tokenizer's post-processor), never splitting a word across chunks. Word scores come from
one vectorized ``bincount`` over the token -> word map; the budget is global across chunks.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..lm_scores import aggregate_to_pieces
from ..segment import Segmentation
from .base import Plan, PromptMethod, Scorer, register, word_priority


def special_affixes(tok) -> tuple[list[int], list[int]]:
    """The ids the tokenizer adds before and after a single sequence (from its own post-processor)."""
    plain = tok("a", add_special_tokens=False)["input_ids"]
    full = tok("a", add_special_tokens=True)["input_ids"]
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return list(full[:i]), list(full[i + len(plain) :])
    raise ValueError("cannot locate the special tokens the tokenizer adds")


def chunk_tokens(piece_of_token: np.ndarray, max_inner: int) -> list[tuple[int, int]]:
    """Split tokens [0, T) into runs of <= ``max_inner`` tokens, cutting only where the piece changes
    (a piece longer than ``max_inner`` is cut inside, as a last resort)."""
    T = len(piece_of_token)
    out, s = [], 0
    while s < T:
        e = min(s + max_inner, T)
        if e < T:
            cut = e
            while cut > s and piece_of_token[cut] == piece_of_token[cut - 1]:
                cut -= 1
            e = cut if cut > s else e
        out.append((s, e))
        s = e
    return out


@torch.inference_mode()
def keep_probs(model, tok, ids: list[int], chunks, keep_label: int = 1, sub_batch: int = 8) -> np.ndarray:
    """P(keep) for every token, each chunk run as ``prefix + tokens + suffix`` (padded batches)."""
    pre, suf = special_affixes(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    probs = np.zeros(len(ids))
    device = next(model.parameters()).device
    for b in range(0, len(chunks), sub_batch):
        part = chunks[b : b + sub_batch]
        seqs = [pre + ids[s:e] + suf for s, e in part]
        n = max(len(x) for x in seqs)
        x = torch.full((len(seqs), n), pad, dtype=torch.long)
        m = torch.zeros((len(seqs), n), dtype=torch.long)
        for r, q in enumerate(seqs):
            x[r, : len(q)] = torch.tensor(q)
            m[r, : len(q)] = 1
        p = torch.softmax(model(input_ids=x.to(device), attention_mask=m.to(device)).logits.float(), -1)
        p = p[..., keep_label].cpu().numpy()
        for r, (s, e) in enumerate(part):
            probs[s:e] = p[r, len(pre) : len(pre) + e - s]
    return probs


@register("llmlingua2")
@dataclass(frozen=True)
class LLMLingua2(PromptMethod):
    """Token classification (LLMLingua-2 checkpoints): keep the words with the highest P(keep).

    Pan et al., LLMLingua-2, Findings of ACL 2024 (arXiv:2403.12968)."""

    model: str | None = None  # local folder of a microsoft/llmlingua-2-* checkpoint (required)
    chunk_tokens: int = 512
    keep_label: int = 1
    sub_batch: int = 8

    minimums = {"chunk_tokens": 1, "keep_label": 0, "sub_batch": 1}

    def load(self, objects: tuple[Any, Any] | None = None) -> Lingua2Scorer:
        """The scorer with ``objects`` (model, tokenizer), or with the checkpoint in the folder ``model``."""
        if objects is None:
            if self.model is None:
                raise ValueError(
                    "llmlingua2 needs model=<local folder of a microsoft/llmlingua-2-* checkpoint> "
                    "(e.g. llmlingua-2-xlm-roberta-large-meetingbank); nothing is downloaded"
                )
            from transformers import AutoModelForTokenClassification, AutoTokenizer

            objects = (
                AutoModelForTokenClassification.from_pretrained(self.model).eval(),
                AutoTokenizer.from_pretrained(self.model),
            )
        return Lingua2Scorer(self, *objects)


class Lingua2Scorer(Scorer):
    """:class:`LLMLingua2` with its token classifier loaded; it classifies words, so token granularity."""

    granularity = "token"

    def __init__(self, cfg: LLMLingua2, model, tokenizer) -> None:
        self.cfg, self.model, self.own_tokenizer, self.name = cfg, model, tokenizer, cfg.name
        pre, suf = special_affixes(tokenizer)
        if cfg.chunk_tokens <= len(pre) + len(suf):
            raise ValueError(f"chunk_tokens must exceed the {len(pre) + len(suf)} special tokens")

    def piece_scores(self, seg: Segmentation) -> np.ndarray:
        enc = self.own_tokenizer(seg.text, add_special_tokens=False, return_offsets_mapping=True, verbose=False)
        ids = list(enc["input_ids"])
        offs = np.asarray(enc["offset_mapping"], dtype=np.int64).reshape(-1, 2)
        if not ids:
            return np.zeros(len(seg))
        owner = np.searchsorted(seg.starts, np.maximum(offs[:, 1] - 1, offs[:, 0]), side="right") - 1
        pre, suf = special_affixes(self.own_tokenizer)
        chunks = chunk_tokens(owner, self.cfg.chunk_tokens - len(pre) - len(suf))
        p = keep_probs(self.model, self.own_tokenizer, ids, chunks, self.cfg.keep_label, self.cfg.sub_batch)
        return np.nan_to_num(aggregate_to_pieces(seg.starts, offs, p, len(seg)), nan=0.0)

    def plan(self, seg: Segmentation, question: str | None) -> Plan:
        return Plan(word_priority(self.piece_scores(seg)))
