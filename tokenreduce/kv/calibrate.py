"""Calibration passes that need the whole model (not one layer's view): Q-Filters' query directions.

``calibrate_qfilters(model, prompts)`` runs each prompt through the model once and, in a forward hook on
every attention module, recomputes the layer's queries (after RoPE, exactly as the model does) and sums
their first and second moments per KV-head group; the principal directions of the summed moments are
the filters (:mod:`tokenreduce.kv.presses.qfilters`). Save them with ``save_filters`` and use
``QFilters(filters=path)``.
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
            model(input_ids=ids, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([directions(*sums[m.layer_idx])[0] for m in mods])
