"""Greedy generation with a compressed KV cache (batch > 1 with left padding).

The loop is explicit (:mod:`tokenreduce.kv.session`) so that positions, masks and chunked prefill are
under our control: positions come from the 2D mask over all tokens seen (so compressed caches keep the
original positions), and the mask is mapped onto the compressed cache by the press hooks.
"""

from __future__ import annotations

import warnings

import torch
from torch import Tensor, nn

from . import cache as kvc
from . import families
from .hooks import apply_press
from .kvzip import compress_cache, prompt_ids
from .presses import KVzip, Press, make_press
from .ragged import ragged_attention_for
from .session import Session, greedy, left_pad, pack_left, prefill


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
    if isinstance(press, KVzip):  # full prefill, then a scoring pass over the context
        press.check_model(model)
        families.check_all_layers(model, "kvzip")
        families.check_press(model, press)
        logits = prefill(session, context_ids, context_mask, None, chunk_size)
        compress_cache(model, session.cache, context_ids, context_mask, press, prompt_ids(press, tokenizer))
        with ragged_attention_for(model, press):
            if question_ids is not None:
                logits = session.feed(question_ids, question_mask)
            return greedy(session, logits, max_new_tokens, eos, steps=steps)
    with apply_press(model, press, auto=False) as runner:
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
