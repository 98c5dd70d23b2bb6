"""A cache plus the 2D mask of every token fed so far, and the prefill / greedy loops that feed it.

Shared by :mod:`tokenreduce.kv.generate` (generation), :mod:`tokenreduce.kv.kvzip` (KVzip's scoring
pass) and :mod:`tokenreduce.kv.bench`. Positions come from the 2D mask over all tokens seen, so a
compressed cache keeps the original positions; the mask is mapped onto the compressed cache here.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import cache as kvc
from .hooks import PressRunner


@dataclass
class Session:
    """A cache plus the full 2D mask of every token fed so far (columns = tokens seen)."""

    model: nn.Module
    cache: object
    mask: Tensor  # (B, seen) long

    @torch.no_grad()
    def feed(
        self, ids: Tensor, mask: Tensor | None = None, runner: PressRunner | None = None, compress: bool = False,
        last_only: bool = False,
    ) -> Tensor:
        """Run ``ids`` (B, q) through the model after what was fed before; returns logits (B, q, V)
        (``last_only``: (B, 1, V), skipping the vocabulary projection of the other positions).

        ``compress``: the press of ``runner`` compresses the cache after this forward (the last prefill
        chunk), whatever its length."""
        mask = torch.ones_like(ids) if mask is None else mask
        full = torch.cat([self.mask, mask.to(self.mask.dtype)], dim=1)
        pos = (full.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        if compress:
            if runner is None:
                raise ValueError("compress=True needs the PressRunner of an apply_press block")
            runner.compress_next()
        mapped = kvc.sliding_masks(self.model, self.cache, full, ids)  # sliding layers: over tokens
        if mapped is None:
            mapped = kvc.rewrite_mask(self.cache, full)  # onto the compressed cache's entries
        out = self.model(input_ids=ids, attention_mask=mapped, position_ids=pos, cache=self.cache, use_cache=True,
                         logits_to_keep=1 if last_only else 0)
        self.mask = full
        return out.logits


def left_pad(tokenizer, texts: list[str], add_special_tokens: bool = True) -> tuple[Tensor, Tensor]:
    """Token ids and mask (B, N), padded on the left."""
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        enc = tokenizer(texts, return_tensors="pt", padding=True, add_special_tokens=add_special_tokens)
    finally:
        tokenizer.padding_side = side
    return enc.input_ids, enc.attention_mask


def pack_left(ids: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Move each row's padding to the left, real tokens keeping their order (two left-padded blocks
    side by side leave padding in the middle, and window presses would score the last columns, not
    a row's last tokens)."""
    order = mask.argsort(dim=1, stable=True)  # padding (0) first
    return ids.gather(1, order), mask.gather(1, order)


def prefill(
    session: Session, ids: Tensor, mask: Tensor, runner: PressRunner | None, chunk_size: int | None = None
) -> Tensor:
    """Feed the prompt (in chunks of ``chunk_size`` tokens if given), compressing after every chunk;
    returns the logits of the last chunk.

    The budget is the whole prompt's, ``ceil(keep * n_b)`` entries per row (and layer, and head share),
    and the press compresses the cache back to it after each chunk, so the cache never holds more than
    the budget plus one chunk; window presses score each chunk with that chunk's own last queries.
    Chunks are cut from the end (the last ends at the last token), so with left padding a row is cut
    into the same chunks in a batch as alone. One chunk (``chunk_size`` None or >= the prompt) is
    one-shot compression exactly.
    """
    n = ids.shape[1]
    step = n if chunk_size is None else chunk_size
    tokens = mask.sum(-1)
    logits = None
    for e in _chunk_ends(n, step):
        s = max(0, e - step)
        if runner is not None:
            runner.compress_next(tokens)
        logits = session.feed(ids[:, s:e], mask[:, s:e], runner, last_only=True)
    return logits


def _chunk_ends(n: int, step: int) -> list[int]:
    """Ends of the chunks of ``step`` columns cut from the end of ``n`` (the first may be shorter)."""
    return sorted(range(n, 0, -step))


def greedy(
    session: Session, logits: Tensor, max_new_tokens: int, eos: int | None, runner: PressRunner | None = None,
    steps: list[Tensor] | None = None,
) -> Tensor:
    """Greedy continuation from the last logits; returns new ids (B, T) (rows stop after ``eos``).

    ``steps``, if given, receives the logits (B, V) each new token was chosen from."""
    out = []
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    last = logits[:, -1]
    for t in range(max_new_tokens):
        nxt = last.argmax(-1)
        out.append(nxt)
        if steps is not None:
            steps.append(last)
        if eos is not None:
            done |= nxt == eos
            if bool(done.all()):
                break
        if t + 1 < max_new_tokens:
            last = session.feed(nxt[:, None], runner=runner)[:, -1]
    return torch.stack(out, dim=1)
