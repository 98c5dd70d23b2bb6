"""Greedy generation and teacher forcing with a compressed KV cache (batch > 1 with left padding).

The loop is explicit so that positions, masks and chunked prefill are under our control:
positions come from the 2D mask over all tokens seen (so compressed caches keep the original
positions), and the mask is mapped onto the compressed cache by the press hooks.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from . import cache as kvc
from .hooks import PressRunner, apply_press
from .presses.base import Press, make_press
from .ragged import ragged_attention_for


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
        (``last_only``: (B, 1, V), skipping the vocabulary projection of the other positions)."""
        mask = torch.ones_like(ids) if mask is None else mask
        full = torch.cat([self.mask, mask.to(self.mask.dtype)], dim=1)
        pos = (full.cumsum(-1) - 1).clamp(min=0)[:, -ids.shape[1] :]
        if runner is not None:
            runner.force_next = compress
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
    """Feed the prompt (in chunks of ``chunk_size`` tokens if given); compress once, after the last chunk.

    Returns the logits of the last chunk. The scoring window of window-based presses lies in the last chunk.
    """
    n = ids.shape[1]
    step = n if chunk_size is None else chunk_size
    logits = None
    for s in range(0, n, step):
        e = min(n, s + step)
        logits = session.feed(ids[:, s:e], mask[:, s:e], runner, compress=runner is not None and e == n, last_only=True)
    return logits


def greedy(
    session: Session, logits: Tensor, max_new_tokens: int, eos: int | None, runner=None, steps: list | None = None
) -> Tensor:
    """Greedy continuation from the last logits; returns new ids (B, T) (rows stop after ``eos``).

    ``steps``, if given, receives the logits (B, V) each new token was chosen from."""
    out = []
    done = torch.zeros(logits.shape[0], dtype=torch.bool)
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


@torch.no_grad()
def generate_ids(
    model: nn.Module,
    context_ids: Tensor,
    context_mask: Tensor | None = None,
    question_ids: Tensor | None = None,
    press: Press | None = None,
    *,
    question_mask: Tensor | None = None,
    query_aware: bool = False,
    max_new_tokens: int = 32,
    eos: int | None = None,
    chunk_size: int | None = None,
    tokenizer=None,
    output_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Greedy new token ids (B, T) for ``context + question`` with the context's cache compressed.

    ``query_aware=False``: only the context is compressed, the question is fed afterwards (one cache
    serves any question). ``query_aware=True``: the question is part of the compressed prefill, so it
    lies in the scoring window of window-based presses. ``tokenizer`` tokenizes KVzip's reconstruction prompt.
    ``output_logits``: also return the logits (B, T, V) each new token was chosen from.
    """
    check_inputs(model, context_ids, context_mask, question_ids, question_mask, max_new_tokens, chunk_size)
    steps: list[Tensor] = []
    ids = _generate(model, context_ids, context_mask, question_ids, press, question_mask, query_aware,
                    max_new_tokens, eos, chunk_size, tokenizer, steps)
    return (ids, torch.stack(steps, dim=1)) if output_logits else ids


def check_inputs(model, context_ids, context_mask, question_ids, question_mask, max_new_tokens, chunk_size) -> None:
    """Bad inputs fail here, before any compute, naming the fix; a run past the model's trained context
    (``max_position_embeddings``) warns."""
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an int >= 1, got {max_new_tokens!r}")
    if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, int) or chunk_size < 1):
        raise ValueError(f"chunk_size must be None (one pass) or an int >= 1, got {chunk_size!r}")
    real = context_ids.shape[1] if context_mask is None else context_mask.sum(-1)
    empty = [] if context_mask is None else (real == 0).nonzero().flatten().tolist()
    if context_ids.shape[1] == 0 or empty:
        rows = f" (rows {empty})" if empty else ""
        raise ValueError(f"the context is empty{rows}: give each row at least one token to compress")
    longest = int(real if context_mask is None else real.max()) + max_new_tokens
    if question_ids is not None:
        longest += question_ids.shape[1] if question_mask is None else int(question_mask.sum(-1).max())
    limit = getattr(model.config, "max_position_embeddings", None)
    if limit and longest > limit:
        warnings.warn(f"context + question + max_new_tokens reaches {longest} positions, past the model's "
                      f"max_position_embeddings={limit}: quality past it is not what the model was trained for",
                      stacklevel=3)


def _generate(model, context_ids, context_mask, question_ids, press, question_mask, query_aware, max_new_tokens,
              eos, chunk_size, tokenizer, steps: list[Tensor]) -> Tensor:
    context_mask = torch.ones_like(context_ids) if context_mask is None else context_mask
    if question_ids is not None and question_mask is None:
        question_mask = torch.ones_like(question_ids)
    if query_aware and question_ids is not None:
        context_ids, context_mask = pack_left(torch.cat([context_ids, question_ids], 1),
                                              torch.cat([context_mask, question_mask], 1))
        question_ids = None
    session = Session(model, kvc.new_cache(model), context_mask[:, :0])
    if press is None:
        logits = prefill(session, context_ids, context_mask, None, chunk_size)
        if question_ids is not None:
            logits = session.feed(question_ids, question_mask)
        return greedy(session, logits, max_new_tokens, eos, steps=steps)
    if getattr(press, "reconstructs", False):  # KVzip: full prefill, then a scoring pass over the context
        from .kvzip import compress_cache, prompt_ids

        press.check_model(model)
        logits = prefill(session, context_ids, context_mask, None, chunk_size)
        compress_cache(model, session.cache, context_ids, context_mask, press, prompt_ids(press, tokenizer))
        with ragged_attention_for(model, press):
            if question_ids is not None:
                logits = session.feed(question_ids, question_mask)
            return greedy(session, logits, max_new_tokens, eos, steps=steps)
    with apply_press(model, press) as runner:
        runner.auto = False
        logits = prefill(session, context_ids, context_mask, runner, chunk_size)
        if question_ids is not None:
            logits = session.feed(question_ids, question_mask, runner)
        return greedy(session, logits, max_new_tokens, eos, runner, steps)


def generate(
    model: nn.Module,
    tokenizer,
    context: str | list[str],
    question: str | list[str] = "",
    press: Press | str | None = None,
    *,
    query_aware: bool = False,
    max_new_tokens: int = 32,
    chunk_size: int | None = None,
    **press_params,
) -> str | list[str]:
    """Answer ``question`` about ``context`` with a compressed KV cache; greedy decoding.

    ``press`` is a :class:`Press` or a registered name (``press_params`` go to it, e.g. ``keep=0.25``).
    Lists of contexts/questions run as one left-padded batch.
    """
    if isinstance(press, str):
        press = make_press(press, **press_params)
    elif press_params:
        raise TypeError("press parameters need a press name")
    single = isinstance(context, str)
    contexts = [context] if single else list(context)
    questions = [question] * len(contexts) if isinstance(question, str) else list(question)
    if len(questions) != len(contexts):
        raise ValueError(f"got {len(contexts)} contexts but {len(questions)} questions")
    ids, mask = left_pad(tokenizer, contexts)
    q_ids = q_mask = None
    if any(questions):
        q_ids, q_mask = left_pad(tokenizer, questions, add_special_tokens=False)
    new = generate_ids(
        model, ids, mask, q_ids, press, question_mask=q_mask, query_aware=query_aware, max_new_tokens=max_new_tokens,
        eos=tokenizer.eos_token_id, chunk_size=chunk_size, tokenizer=tokenizer,
    )
    texts = []
    for row in new.tolist():
        if tokenizer.eos_token_id in row:
            row = row[: row.index(tokenizer.eos_token_id)]
        texts.append(tokenizer.decode(row, skip_special_tokens=True))
    return texts[0] if single else texts
