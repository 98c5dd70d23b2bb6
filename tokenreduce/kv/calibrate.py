"""Calibration passes that need the whole model (not one layer's view): Q-Filters' query directions and
DuoAttention's retrieval heads.

``calibrate_qfilters(model, prompts)`` runs each prompt through the model once and, in a forward hook on
every attention module, recomputes the layer's queries (after RoPE, exactly as the model does) and sums
their first and second moments per KV-head group; the principal directions of the summed moments are
the filters (:mod:`tokenreduce.kv.presses.qfilters`). Save them with ``save_filters`` and use
``QFilters(filters=path)``.

``calibrate_duo(model)`` scores every KV head on synthetic retrieval prompts generated here: random tokens
with a needle (a ``key`` span followed by a ``value`` span) at a random depth, and the key span repeated at
the end, so the model has to look the value up (an induction lookup). A head's score is the attention its
last query pays to the needle, averaged over the head's GQA group and the prompts: retrieval heads read
it, streaming heads look at sinks and recent tokens. Save with ``save_heads`` and use
``DuoAttention(heads=path)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import scoring
from .hooks import attention_modules
from .presses.qfilters import directions, query_moments


@torch.no_grad()
def calibrate_qfilters(model: nn.Module, prompts: list[Tensor]) -> Tensor:
    """Principal query directions (layers, kv heads, head dim) over the tokens of ``prompts`` (each (1, n) ids)."""
    if not prompts:
        raise ValueError("calibrate_qfilters: give at least one prompt")
    mods = attention_modules(model)
    sums: dict[int, tuple[Tensor, Tensor]] = {}

    def hook(mod, args, kwargs, out):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cos, sin = kwargs["position_embeddings"]
        q = scoring.window_queries(mod, hidden, cos, sin)
        hkv = mod.config.num_key_value_heads
        f, g = query_moments(q, torch.ones(hidden.shape[:2], device=hidden.device), hkv)
        old = sums.get(mod.layer_idx)
        sums[mod.layer_idx] = (f, g) if old is None else (old[0] + f, old[1] + g)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in mods]
    try:
        for ids in prompts:
            model(input_ids=ids.to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([directions(*sums[m.layer_idx])[0] for m in mods])


def retrieval_prompts(
    vocab: int, samples: int, length: int, needle: int = 4, seed: int = 0
) -> list[tuple[Tensor, int]]:
    """Synthetic retrieval prompts (1, length) and each needle's start: random tokens (ids >= 100 when the
    vocabulary allows, away from special tokens), ``needle`` key tokens then ``needle`` value tokens at a random
    depth, and the key tokens again at the end."""
    if length < 8 * needle + 8:
        raise ValueError(f"calibrate_duo: length must be >= {8 * needle + 8} tokens, got {length}")
    g = torch.Generator().manual_seed(seed)
    low = 100 if vocab > 1000 else 1
    out = []
    for _ in range(samples):
        ids = torch.randint(low, vocab, (1, length), generator=g)
        start = int(torch.randint(4, length - 4 * needle, (1,), generator=g))
        ids[0, -needle:] = ids[0, start : start + needle]  # the key again: look up what followed it
        out.append((ids, start))
    return out


@torch.no_grad()
def calibrate_duo(model: nn.Module, samples: int = 8, length: int = 512, needle: int = 4, seed: int = 0) -> Tensor:
    """Retrieval score (layers, kv heads) of every KV head: mean attention of the last query to the needle
    (key + value spans) over ``samples`` synthetic prompts of ``length`` tokens."""
    if samples < 1:
        raise ValueError(f"calibrate_duo: samples must be >= 1, got {samples}")
    mods = attention_modules(model)
    prompts = retrieval_prompts(model.config.vocab_size, samples, length, needle, seed)
    total = {m.layer_idx: 0.0 for m in mods}
    span: list[int] = [0]

    def hook(mod, args, kwargs, out):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cos, sin = kwargs["position_embeddings"]
        q = scoring.window_queries(mod, hidden[:, -1:], cos[:, -1:], sin[:, -1:])
        k = scoring.window_keys(mod, hidden, cos, sin)
        a = scoring.window_attention(q, k, mod.scaling)[:, :, 0]  # (1, H, N)
        hit = a[..., span[0] : span[0] + 2 * needle].sum(-1)  # (1, H)
        total[mod.layer_idx] = total[mod.layer_idx] + scoring.group_mean(hit[..., None], k.shape[1])[0, :, 0]

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in mods]
    try:
        for ids, start in prompts:
            span[0] = start
            model(input_ids=ids.to(model.device), use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([total[m.layer_idx] / samples for m in mods])
