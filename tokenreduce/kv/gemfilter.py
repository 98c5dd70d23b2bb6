"""GemFilter: an early layer's attention picks the prompt tokens, then the model runs on those only.

Z. Shi, Y. Ming, X.-P. Nguyen, Y. Liang, S. Joty, "Discovering the Gems in Early Layers: Accelerating
Long-Context LLMs with 1000x Input Token Reduction", arXiv:2409.17422 (2024).

Pass 1 runs the decoder only up to the filter layer's attention (the rest of the forward is skipped
by raising from a hook), scores every token by the last query's attention there (rebuilt from its
query/keys, summed over heads; no eager attention), and keeps the top ``keep`` fraction in their
original order. Pass 2 is an ordinary prefill of the kept tokens (fresh contiguous positions).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from . import cache as kvc
from . import scoring
from .hooks import attention_modules
from .select import keep_count


class _Stop(Exception):
    pass


@torch.no_grad()
def gemfilter_select(model: nn.Module, input_ids: Tensor, keep: float, layer: int | None = None) -> Tensor:
    """Indices (k,) of the kept tokens of ``input_ids`` (1, N), sorted; ``layer`` defaults to 1/3 depth."""
    if input_ids.dim() != 2 or input_ids.shape[0] != 1:
        raise ValueError(f"gemfilter works on one sequence (1, N), got shape {tuple(input_ids.shape)}")
    if not 0.0 < keep <= 1.0:
        raise ValueError(f"gemfilter: keep must be in (0, 1], got {keep!r}")
    mods = attention_modules(model)
    layer = len(mods) // 3 if layer is None else layer
    if not 0 <= layer < len(mods):
        raise ValueError(f"gemfilter: layer must be in [0, {len(mods) - 1}], got {layer}")
    n = input_ids.shape[1]
    got = {}

    def hook(mod, args, kwargs, out):
        cos, sin = kwargs["position_embeddings"]
        h = kwargs.get("hidden_states", args[0] if args else None)
        got["q"] = scoring.window_queries(mod, h[:, -1:], cos[:, -1:], sin[:, -1:])
        got["scaling"] = mod.scaling
        raise _Stop

    cache = kvc.new_cache(model)
    handle = mods[layer].register_forward_hook(hook, with_kwargs=True)
    try:
        model.model(input_ids=input_ids, cache=cache, use_cache=True)
    except _Stop:
        pass
    finally:
        handle.remove()
    keys, _ = kvc.layer_kv(cache, mods[layer].layer_idx)
    scores = scoring.window_attention(got["q"], keys, got["scaling"])[0, :, 0].sum(0)  # (N,)
    k = keep_count(n, keep)
    return scores.sort(descending=True, stable=True).indices[:k].sort().values


def gemfilter_ids(model: nn.Module, input_ids: Tensor, keep: float, layer: int | None = None) -> Tensor:
    """The reduced prompt (1, k) to prefill instead of ``input_ids``."""
    return input_ids[:, gemfilter_select(model, input_ids, keep, layer)]
