"""Attach a press to a Hugging Face causal LM (kvpress-style forward hooks; no forward is copied).

``with apply_press(model, press): model.generate(...)`` compresses the cache right after the prefill
(the first forward whose cache held nothing before it). Each attention module gets a forward hook
that scores the layer's freshly cached keys and replaces them with the kept entries; a pre-hook on
the model maps later 2D attention masks onto the compressed cache (see :mod:`tokenreduce.kv.cache`).
New tokens keep their original positions (``generate`` derives position ids from the full mask),
so kept keys need no re-rotation.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..core.provenance import Provenance, layer_map
from . import cache as kvc
from . import capture, families
from .channels import ChannelLayer
from .presses.base import (
    ChannelPress,
    DecodeTimePress,
    LayerView,
    MergingPress,
    MixedPrecisionPress,
    Press,
    RaggedPress,
    ReconstructionPress,
    ScoringPress,
)
from .ragged import RaggedLayer, ragged_attention_for, select_ragged
from .select import gather, protect, select


def compress_layer(
    press: ScoringPress, cache, module: nn.Module, n_layers: int, hidden, cos, sin, valid,
    budgets: torch.Tensor | None = None, score: Callable[[LayerView], torch.Tensor] | None = None,
) -> torch.Tensor:
    """Score layer ``module.layer_idx``'s cached entries with ``press`` and keep the best; returns the prefix mask.

    ``hidden``/``cos``/``sin`` are the inputs of the last forward (its queries are the scoring window);
    ``valid`` (B, N) marks the real cached entries; ``budgets`` (B,), if given, are entry counts per row
    that replace the press's ``keep`` (decode-time compression, and every chunk of a chunked prefill).
    A layer already stored ragged (an earlier chunk of a chunked prefill) is scored on its padded
    entries, each KV head seeing only its own. ``score`` replaces ``press.score`` (a caller pressing one
    prefill at several keeps reuses the scores, which do not depend on keep).
    """
    idx = module.layer_idx
    if isinstance(cache.layers[idx], ChannelLayer):  # pruned after an earlier chunk: pressed again as dense
        kvc.replace_layer(cache, idx, cache.layers[idx].to_dense())
    keys, values = kvc.layer_kv(cache, idx)
    stored = cache.layers[idx]
    head_valid = None
    if isinstance(stored, RaggedLayer):  # the 2D mask is sized after layer 0: only its tail is this layer's
        head_valid = stored.head_valid()
        tail = valid[:, valid.shape[1] - stored.appended :]
        valid = torch.cat([head_valid[..., : stored.prefix_len].any(1), tail], dim=-1)
    view = LayerView(module, idx, n_layers, hidden, cos, sin, keys, values, valid, head_valid)
    scores = protect((score or press.score)(view), view.key_valid, press.sinks, press.recent)
    if isinstance(press, MergingPress):  # evicted entries folded into the kept ones (the eviction's bytes)
        kept, prefix_mask = select(scores, view.key_valid, press.layer_keep(idx, n_layers) if budgets is None
                                   else budgets)
        kvc.set_layer_kv(cache, idx, *press.merge(view, kept, prefix_mask))
        return prefix_mask
    prefix_mask = keep_scored(press, cache, idx, n_layers, keys, values, scores, view.key_valid, budgets)
    if isinstance(press, ChannelPress):  # key channels pruned too (ThinK): its own storage layer
        layer = press.channel_layer(view, *kvc.layer_kv(cache, idx))
        if layer is not None:
            kvc.replace_layer(cache, idx, layer)
    return prefix_mask


def keep_scored(
    press: Press, cache, idx: int, n_layers: int, keys, values, scores, valid, budgets: torch.Tensor | None = None
) -> torch.Tensor:
    """Replace layer ``idx``'s entries with the best by ``scores`` (B, Hkv, N) (already protected); returns
    the prefix mask. Shared by :func:`compress_layer` and presses scored outside the layer (KVzip).
    ``valid``: (B, N), or (B, Hkv, N) for a ragged layer pressed again (ragged presses only)."""
    keep = press.layer_keep(idx, n_layers) if budgets is None else budgets
    if isinstance(press, RaggedPress) and press.ragged:
        return keep_ragged(cache, idx, keys, values, select_ragged(scores, valid, keep, press.min_share))
    kept, prefix_mask = select(scores, valid, keep)
    keys, values = gather(keys, kept), gather(values, kept)
    if isinstance(press, MixedPrecisionPress):
        kvc.replace_layer(cache, idx, press.build_layer(keys, values, scores.gather(-1, kept), prefix_mask))
    else:
        kvc.set_layer_kv(cache, idx, keys, values)
    return prefix_mask


def keep_ragged(cache, idx: int, keys, values, kept: torch.Tensor) -> torch.Tensor:
    """Store layer ``idx`` as a ragged layer of the entries marked by ``kept`` (B, Hkv, N) bool; returns the
    prefix mask (all ones: the per-head filler is masked by the ragged attention, not by the 2D mask)."""
    kvc.replace_layer(cache, idx, RaggedLayer.from_chosen(keys, values, kept))
    return torch.ones(keys.shape[0], kvc.seq_length(cache), dtype=torch.bool, device=keys.device)


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """The self-attention modules of a Llama/Qwen2/Mistral/Gemma-style decoder, in layer order, for methods
    that recompute queries from ``q_proj`` (KVzip, GemFilter, the benchmark; a press uses
    :func:`tokenreduce.kv.families.attention_layers`)."""
    what = "this method (kvzip, gemfilter, the benchmark)"
    mods = [m for m in model.modules() if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "layer_idx"))]
    if not mods:
        raise ValueError(families.refusal(model, what))
    families.check_recomputable(model, mods, what)
    families.check_all_layers(model, what)
    return sorted(mods, key=lambda m: m.layer_idx)


class PressRunner:
    """Hook state for one ``apply_press`` context: the press, and the mask of the forward in flight.

    Which forwards compress is set by :func:`apply_press`'s ``auto`` and by :meth:`compress_next`,
    nothing else: ``auto`` compresses the first multi-token forward on an empty cache (``model.generate``);
    an explicit loop (:func:`tokenreduce.kv.session.prefill`) passes ``auto=False`` and calls
    :meth:`compress_next` before its last prefill chunk.
    """

    def __init__(self, model: nn.Module, press: ScoringPress, auto: bool = True):
        self.model, self.press = model, press
        every, self.recorded = families.attention_layers(model)  # recorded: fused projections (kv/capture.py)
        self.modules = families.press_modules(model, every)  # sliding-window layers stay as they are
        self.n_layers = len(every)  # a layer's depth (PyramidKV's schedule) counts every layer
        self.mask: torch.Tensor | None = None  # 2D mask of the current forward, mapped onto the cache
        self.armed = False  # compress in the current forward
        self._auto = auto
        self._force_next = False  # set by compress_next() for the next forward only
        self._tokens: torch.Tensor | None = None  # set by compress_next(): prompt tokens per row (budgets)
        self.tokens: torch.Tensor | None = None  # the forward in flight compresses to these tokens' budgets
        self._seen = 0  # tokens the cache stands for once the forward in flight is cached (its first layer's)
        self.active: ScoringPress = press  # the press applied in the current forward
        self.budgets: torch.Tensor | None = None  # per-row entry budgets of a decode-time compression

    @property
    def auto(self) -> bool:
        """True if the first multi-token forward on an empty cache compresses (fixed at construction)."""
        return self._auto

    def compress_next(self, tokens: torch.Tensor | None = None) -> None:
        """Compress the cache after the next forward, whatever its length (a chunk of a prefill).

        ``tokens`` (B,): the real tokens of each row's whole prompt; the layer budgets are then
        ``ceil(layer_keep * tokens)`` entries (a chunked prefill compresses to the final budget after
        every chunk), instead of ``keep`` times the entries held."""
        self._force_next = True
        self._tokens = tokens

    def pre_forward(self, module, args, kwargs):
        cache = kvc.ensure_cache(self.model, kwargs)  # model(**enc, use_cache=True) compresses too
        ids = kwargs.get("input_ids", args[0] if args else None)
        inputs = ids if ids is not None else kwargs["inputs_embeds"]
        q_len = inputs.shape[1]
        empty = cache is None or kvc.n_layers(cache) == 0 or kvc.seq_length(cache) == 0
        self.armed = cache is not None and (self._force_next or (self._auto and empty and q_len > 1))
        self._force_next = False
        self.active, self.budgets = self.press, None
        self.tokens, self._tokens = (self._tokens if self.armed else None), None
        state = kvc.get_state(cache) if cache is not None else None
        mask = kwargs.get("attention_mask")
        if not isinstance(mask, kvc.LayerMasks):  # not mapped yet (the session maps its own)
            hybrid = kvc.sliding_masks(self.model, cache, mask, inputs)
            if hybrid is not None:  # compressed full-attention layers + uncompressed sliding-window layers
                mask = kwargs["attention_mask"] = hybrid
            elif state is not None:  # one column per token seen -> per cache entry (once, if another hook has not)
                mask = kwargs["attention_mask"] = state.map_mask(mask, kvc.seq_length(cache), q_len)
        self.mask = mask.entries if isinstance(mask, kvc.LayerMasks) else mask
        if isinstance(self.press, DecodeTimePress) and cache is not None:  # decode-time compression
            if self.armed and self.press.keep >= 1.0:
                self.armed = False
            elif not self.armed and not empty and q_len == 1:
                step = self.press.decode_step(self._counts(inputs, cache))
                self.armed = step is not None
                if step is not None:
                    self.active, self.budgets = step
        if self.recorded and self.armed:  # record this forward's queries for the press
            capture.watch(self.modules)
        return args, kwargs

    def _counts(self, inputs: torch.Tensor, cache) -> torch.Tensor:
        """Real entries per row (B,) once this forward's tokens are cached (from the mapped 2D mask)."""
        if self.mask is not None and self.mask.ndim == 2:
            return self.mask.long().sum(-1)
        return torch.full((inputs.shape[0],), kvc.seq_length(cache) + inputs.shape[1], device=inputs.device)

    def after_attention(self, module, args, kwargs, output):
        if not self.armed:
            return output
        cache = kvc.cache_of(kwargs)
        if self.recorded:  # the queries the model attended with stand in for hidden states + rotary
            module, hidden, cos, sin = capture.take(module)
        else:
            hidden = kwargs.get("hidden_states", args[0] if args else None)
            cos, sin = kwargs["position_embeddings"]
        idx = module.layer_idx
        n = kvc.seq_length(cache, idx)
        state = layer_map(cache, idx)  # the entries' provenance so far (e.g. visual tokens pruned before the LLM)
        _check_alike(cache, idx, state)
        if isinstance(cache.layers[idx], RaggedLayer) and self.mask is not None and self.mask.ndim == 2:
            valid = self.mask.bool()  # entries of layer 0: compress_layer reads only the appended tail
        else:
            valid = self._valid(hidden.shape[0], n, hidden.device, state)
        if idx == self.modules[0].layer_idx:  # tokens the entries stand for (ragged layers differ in length)
            self._seen = state.tokens(n) if state else n
        budgets = self.budgets
        if budgets is None and self.tokens is not None:  # chunked prefill: this layer's final budget
            keep = float(self.active.layer_keep(idx, self.n_layers))
            budgets = torch.ceil(self.tokens.to(hidden.device).double() * keep - 1e-9).long()
        prefix_mask = compress_layer(self.active, cache, module, self.n_layers, hidden, cos, sin, valid, budgets)
        if idx == self.modules[-1].layer_idx:  # the cache now stands for everything seen so far
            kvc.set_state(cache, kvc.KVState(prefix_mask, self._seen))
        return output

    def _valid(self, b: int, n: int, device, state: Provenance | None) -> torch.Tensor:
        """Real entries (B, n) among the layer's n cached entries."""
        if self.mask is None or self.mask.ndim != 2:
            return torch.ones(b, n, dtype=torch.bool, device=device)
        if state is not None and self.mask.shape[1] != n and self.mask.shape[1] == state.tokens(n):
            return state.rewrite_mask(self.mask).bool()  # a mask over tokens, entries shortened in this forward
        return self.mask[:, -n:].bool() if self.mask.shape[1] >= n else self.mask.bool()


def _check_alike(cache, idx: int, state: Provenance | None) -> None:
    """A press keeps one map for the whole model: refuse caches whose layers were shortened differently."""
    first = layer_map(cache, 0)
    if state is not None and first is not None and state.length != first.length:
        raise ValueError("a KV press needs every layer's cache to stand for the same tokens; visual-token methods "
                         "that shorten only later layers (fastv, pyramiddrop) cannot be combined with a press -- "
                         "use a method applied before the LLM (fastervlm, visionzip, ...)")


@contextmanager
def recording(model: nn.Module, runner: PressRunner) -> Iterator[None]:
    """Record the queries of a fused-projection family's attention while ``runner`` presses it."""
    if not runner.recorded:
        yield
        return
    with capture.capture_queries(model, runner.modules):
        yield


def press_target(model: nn.Module) -> nn.Module:
    """The module whose forward feeds the decoder layers: the model itself, or a vision-language model's
    language model (its 2D mask and positions are over the tokens the LLM sees, after the vision merge)."""
    inner = getattr(model, "model", None)
    lm = getattr(inner, "language_model", None) if inner is not None else None
    return lm if isinstance(lm, nn.Module) else model


@contextmanager
def apply_press(model: nn.Module, press: Press, *, auto: bool = True) -> Iterator[PressRunner]:
    """Compress the KV cache after prefill inside the ``with`` block; yields the :class:`PressRunner`.

    ``auto=True`` (``model.generate``, ``model(**enc)``): the first multi-token forward on an empty cache
    compresses. ``auto=False``: only forwards announced by :meth:`PressRunner.compress_next` do (chunked
    prefill), plus decode-time compression.

    A vision-language model (``model.model.language_model``) is pressed in its language model, after the
    visual tokens are merged in -- and after any visual-token pruning of ``tokenreduce.patched``, whose
    provenance map the press composes with (see docs/KV.md, "VLM + KV press")."""
    if isinstance(press, ReconstructionPress):
        raise ValueError(f"{press.name} scores with a second pass over the context and cannot run inside "
                         "model.generate; use tokenreduce.kv.generate / generate_ids")
    if not isinstance(press, ScoringPress):
        raise TypeError(f"press must be a scoring Press (see tokenreduce.kv.make_press), got {type(press).__name__}")
    target = press_target(model)
    families.check_target(model, target)
    model = target
    press.check_model(model)
    families.check_press(model, press)
    runner = PressRunner(model, press, auto)
    handles = [model.register_forward_pre_hook(runner.pre_forward, with_kwargs=True)]
    handles += [m.register_forward_hook(runner.after_attention, with_kwargs=True) for m in runner.modules]
    try:
        with ragged_attention_for(model, press), recording(model, runner):
            yield runner
    finally:
        for h in handles:
            h.remove()
