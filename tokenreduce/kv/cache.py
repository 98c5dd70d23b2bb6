"""The one place that knows the transformers cache API (written against transformers 5.x).

Everything else in :mod:`tokenreduce.kv` reads and replaces a layer's keys/values through these
functions. A compressed cache holds fewer entries than tokens seen; which token each entry stands for is the
shared :class:`tokenreduce.core.provenance.Provenance` map on the cache (the same record visual-token
pruning writes, so the two compose). A press's map has ``prefix_mask`` (B, L): which of the L stored
prefix entries are real (rows of a padded batch keep different counts and are left-aligned with masked
filler entries), and ``seen``: how many tokens that prefix stood for. Later 2D masks (one column per
token seen) are rewritten to ``prefix_mask + new columns``.
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, get_layer_types_and_kwargs
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

from ..core import provenance as prov
from ..core.provenance import Provenance

# A press's map: ``KVState(prefix_mask, seen)`` (B, L) real entries standing for ``seen`` tokens.
KVState = Provenance.pressed


def new_cache(model) -> DynamicCache:
    return DynamicCache(config=model.config)


def cache_of(kwargs: dict) -> Cache | None:
    """The cache passed to a model's forward (``cache``, or the older ``past_key_values``; GPT-NeoX's
    attention takes ``layer_past``)."""
    for key in ("cache", "past_key_values", "layer_past"):
        if key in kwargs:
            return kwargs[key]
    return None


def ensure_cache(model, kwargs: dict) -> Cache | None:
    """The forward's cache, created and put into ``kwargs`` when the model would make one itself
    (``use_cache`` true, or unset with ``config.use_cache``) -- so hooks see the cache the caller gets back."""
    cache = cache_of(kwargs)
    use = kwargs.get("use_cache")
    if cache is None and (use or (use is None and getattr(model.config, "use_cache", False))):
        cache = kwargs["cache"] = new_cache(model)
    return cache


def clone(cache: Cache) -> Cache:
    """A cache sharing the stored tensors (copy-on-write: updates and presses make new tensors)."""
    out = copy.copy(cache)
    out.layers = [copy.copy(layer) for layer in cache.layers]
    return out


def n_layers(cache: Cache) -> int:
    return len(cache.layers)


def layer_kv(cache: Cache, idx: int) -> tuple[Tensor, Tensor]:
    """Keys and values (B, Hkv, N, D) stored for layer ``idx``."""
    layer = cache.layers[idx]
    if not isinstance(layer, DynamicLayer) or type(layer).update is not DynamicLayer.update:
        if hasattr(layer, "dense_kv"):
            return layer.dense_kv()
        raise TypeError(f"layer {idx}: unsupported cache layer {type(layer).__name__} (sliding/static/quantized)")
    return layer.keys, layer.values


def set_layer_kv(cache: Cache, idx: int, keys: Tensor, values: Tensor) -> None:
    """Replace layer ``idx``'s stored keys/values (new tensors, so the old storage is freed)."""
    layer = cache.layers[idx]
    if type(layer) is not DynamicLayer:
        raise TypeError(f"layer {idx}: cannot replace entries of a {type(layer).__name__}")
    layer.keys, layer.values = keys.contiguous(), values.contiguous()


def replace_layer(cache: Cache, idx: int, layer) -> None:
    """Swap in a custom storage layer (ragged per-head, mixed precision) for layer ``idx``."""
    cache.layers[idx] = layer


def sliding_layers(config) -> frozenset[int]:
    """Layers whose cache keeps only a sliding window of recent tokens (transformers' own rule for ``config``,
    or for its text config; none where the config names no layers)."""
    config = config.get_text_config() if hasattr(config, "get_text_config") else config
    try:
        types, _ = get_layer_types_and_kwargs(config)
    except AttributeError:
        return frozenset()
    return frozenset(i for i, t in enumerate(types) if t == "sliding_attention")


def is_sliding(cache: Cache, idx: int) -> bool:
    return bool(getattr(cache.layers[idx], "is_sliding", False))


def full_layer(cache: Cache) -> int:
    """The first layer that is not a sliding window (0 if none): a press's map and the mask follow it."""
    return next((i for i in range(len(cache.layers)) if not is_sliding(cache, i)), 0)


def seq_length(cache: Cache, idx: int | None = None) -> int:
    """Entries stored in layer ``idx`` (default: the first full-attention layer, the one a press shortens)."""
    idx = full_layer(cache) if idx is None else idx
    return cache.layers[idx].get_seq_length() if idx < len(cache.layers) else 0


def kv_bytes(cache: Cache) -> int:
    """Bytes of key/value storage actually held by the cache (all layers)."""
    total = 0
    for layer in cache.layers:
        if hasattr(layer, "nbytes"):
            total += layer.nbytes()
        elif getattr(layer, "keys", None) is not None:
            total += layer.keys.numel() * layer.keys.element_size() + layer.values.numel() * layer.values.element_size()
    return total


def get_state(cache: Cache) -> Provenance | None:
    """The map of the cache's entries the model-wide 2D mask follows (the first full-attention layer's), or None."""
    return prov.layer_map(cache, full_layer(cache))


def set_state(cache: Cache, state: Provenance) -> None:
    """Record ``state`` for every full-attention layer (a press shortens them all alike; sliding-window
    layers are left as transformers keeps them, see :func:`sliding_masks`)."""
    layers = [i for i in range(n_layers(cache)) if not is_sliding(cache, i)]
    prov.set_maps(cache, state, layers or [0])


def rewrite_mask(cache: Cache | None, attention_mask: Tensor | None) -> Tensor | None:
    """Map a 2D mask over all tokens seen onto the compressed cache's entries + the new tokens."""
    state = get_state(cache) if cache is not None else None
    if state is None or attention_mask is None or attention_mask.ndim != 2:
        return attention_mask
    return state.rewrite_mask(attention_mask)


class LayerMasks(dict):
    """Per-layer-type 4D masks (``{"full_attention": ..., "sliding_attention": ...}``), the form hybrid
    models (Gemma 2/3, Qwen2 with sliding layers) accept as ``attention_mask``; ``entries`` is the 2D
    mask over the compressed layers' entries + the new tokens."""

    entries: Tensor | None = None


def has_sliding(cache: Cache) -> bool:
    return any(is_sliding(cache, i) for i in range(n_layers(cache)))


def sliding_masks(model, cache: Cache | None, mask: Tensor | None, ids: Tensor) -> LayerMasks | None:
    """Where a compressed cache also has sliding-window layers, the ``attention_mask`` for a forward of ``ids``
    (B, q) (or embeddings (B, q, C)) given ``mask`` (B, seen + q) over every token seen; else None (use
    :func:`rewrite_mask`). The compressed full-attention layers get the mask mapped onto their entries, the
    sliding layers (left as transformers keeps them) transformers' own sliding-window mask over the tokens, so
    a token outside the window stays invisible whatever the press kept."""
    state = get_state(cache) if cache is not None else None
    two_d = mask is None or (isinstance(mask, Tensor) and mask.ndim == 2)
    if state is None or not has_sliding(cache) or not two_d:
        return None
    q = ids.shape[1]
    entries = None if mask is None else state.map_mask(mask, seq_length(cache), q)
    shape = torch.empty(ids.shape[0], q, 0, dtype=model.dtype, device=ids.device)  # only size/dtype/device are read
    kw = dict(config=model.config, inputs_embeds=shape, cache=cache)
    out = LayerMasks(full_attention=create_causal_mask(attention_mask=entries, **kw),
                     sliding_attention=create_sliding_window_causal_mask(attention_mask=mask, **kw))
    out.entries = entries
    return out
