"""The hooks of :class:`~tokenreduce.vlm.runner.VLMRunner`, reducing each video's tokens instead of images'.

Everything after the reduction is the image runner's: every later layer gets the kept tokens' rows of the
rotary embeddings, (t, h, w) M-RoPE positions and mask; the cache records which original token each entry
stands for (the shared provenance map), so ``generate`` and KV presses work unchanged. Images in the same
prompt pass through.

A method's stages inside the LLM (:mod:`.llm`) run here too: a prefill stage before its layer (rated from the
previous layer's input, recorded by ``attn_pre``), and a decode stage that, at every decoding step, rates the
video's cached entries by the current token's attention and hands the later layers' attention only the chosen
ones with the text (the choice kept in a :class:`~.llm.DecodeState` on the cache, so nothing global).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...core.provenance import Provenance, layer_map, set_layer_map
from ...kv.cache import cache_of, layer_kv, set_layer_kv
from ...kv.scoring import window_attention, window_queries
from ..families.base import VLMFamily, has_videos
from ..runner import VLMRunner, _assemble, _empty, _same_count
from ..state import CURRENT, Forward, decode_mask, gather_tokens
from .base import VideoMethod, VideoUnit
from .llm import ChosenEntries, DecodeState, chosen_entries, decode_select, merge_dropped

_DECODE = "_tokenreduce_video_decode"  # the decode stage's DecodeState, on the cache


class VideoRunner(VLMRunner):
    """Hook callbacks applying a :class:`VideoMethod` to every video of a prefill."""

    method: VideoMethod

    def __init__(self, family: VLMFamily, method: VideoMethod):
        if family.video_token_id is None:
            raise ValueError(f"{method.name} reduces video tokens; {family.name} takes no video input (qwen2-vl does)")
        super().__init__(family, method)
        method.check_depth(len(family.layers))
        self.llm, self.decoding = method.llm_stage(), method.decode_stage()
        if self.llm is not None:
            self.stages[self.llm.layer] = 1

    def attn_layers(self) -> list[int]:
        extra = [] if self.decoding is None else [self.decoding.layer - 1]
        return sorted({*super().attn_layers(), *extra})

    def attn_pre(self, module, args, kwargs):
        fwd = CURRENT.get()
        if fwd is not None and not fwd.images and self.decoding is not None:  # a decoding step: the rating layer
            if module.layer_idx == self.decoding.layer - 1:
                fwd.attn_in[module.layer_idx] = (kwargs.get("hidden_states", args[0] if args else None),
                                                 *kwargs["position_embeddings"])
            return None
        return super().attn_pre(module, args, kwargs)

    def layer_pre(self, index: int, module, args, kwargs):
        fwd = CURRENT.get()
        if fwd is not None and not fwd.images and self.decoding is not None and index >= self.decoding.layer:
            return self._decode_step(index, args, kwargs)
        out = super().layer_pre(index, module, args, kwargs)
        if fwd is None or not fwd.images:
            return out
        cache = cache_of(kwargs)
        if index == 0 and self.decoding is not None and cache is not None:
            object.__setattr__(cache, _DECODE, DecodeState(_video_flags(fwd, fwd.n, fwd.visual.device)))
        if self.llm is not None and self.llm.prune_cache and index == self.llm.layer and cache is not None:
            _prune_earlier(cache, index)
        return out

    def outer_pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not has_videos(kwargs) or not _empty(cache_of(kwargs)):
            CURRENT.set(None)
            return self._decode_positions(ids, args, kwargs)
        if ids is None:
            raise ValueError("video-token reduction needs input_ids (to find the video tokens), not inputs_embeds")
        rows = self.family.videos(ids, kwargs)
        CURRENT.set(Forward(rows, visual=ids == self.family.video_token_id, n=ids.shape[1]))
        return None

    def _reduce(self, index: int, fwd: Forward, hidden: Tensor) -> Tensor:
        if index != 0:
            return self._llm_stage(index, fwd, hidden)
        kept, hidden = self._videos(fwd, hidden)
        fwd.kept = kept
        return hidden

    def _llm_stage(self, index: int, fwd: Forward, hidden: Tensor) -> Tensor:
        """The prefill stage before layer ``index``: keep the best video tokens present, merge or drop the rest."""
        assert self.llm is not None and fwd.kept is not None  # the stage is registered with the method's layer
        vis = _video_flags(fwd, fwd.n, hidden.device).gather(1, fwd.kept)
        valid = None if fwd.valid is None else fwd.valid.gather(1, fwd.kept)
        if int(vis[0].sum()) == 0 or self.llm.count(int(vis[0].sum())) >= int(vis[0].sum()):
            return hidden
        x, cos, sin = fwd.attn_in[index - 1]
        keep = self.llm.select(self.family.layers[index - 1].self_attn, x, cos, sin, vis, valid)
        if self.llm.merge:
            hidden = merge_dropped(hidden, vis, keep)
        kept = keep.nonzero()[:, 1].view(hidden.shape[0], -1)
        fwd.kept = fwd.kept.gather(1, kept)
        return gather_tokens(hidden, kept)

    def _decode_step(self, index: int, args, kwargs):
        """A decoding step in layer ``index`` >= the decode stage's layer: its attention reads only the chosen
        video entries (chosen at the stage's layer from the current token's attention in the layer before), the
        text and the new tokens; every entry stays stored."""
        cache, fwd, st = cache_of(kwargs), CURRENT.get(), self.decoding
        state = getattr(cache, _DECODE, None)
        if state is None:  # no video in the prompt
            return super().layer_pre(index, None, args, kwargs)
        if fwd.valid is None:
            raise ValueError(f"{self.method.name}: decoding with the KV stage needs a 2-D attention mask")
        n0 = state.visual.shape[1]
        if index == st.layer:
            rating = st.layer - 1
            x, cos, sin = fwd.attn_in[rating]
            attn = self.family.layers[rating].self_attn
            prev = layer_map(cache, rating) or Provenance.identity(x.shape[0], n0, x.device)
            if bool((prev.index < 0).any()):
                raise ValueError(f"{self.method.name}: the decode-time KV stage needs cache entries that stand for "
                                 "single tokens; a KV press that keeps entries per head left none (use kv_keep=1)")
            entries = prev.rewrite_mask(fwd.valid).bool()
            q = window_queries(attn, x[:, -1:], cos[:, -1:], sin[:, -1:])
            a = window_attention(q, layer_kv(cache, rating)[0], attn.scaling, entries).mean(1)[:, -1]
            state = decode_select(st, state, a[:, : prev.length], prev.index, prev.real)
            object.__setattr__(cache, _DECODE, state)
        valid = fwd.valid.clone()
        valid[:, :n0] &= ~(state.visual & ~state.chosen)
        own = layer_map(cache, index)
        entries = valid if own is None else own.rewrite_mask(valid)
        stored, dtype = cache.get_seq_length(index), kwargs["position_embeddings"][0].dtype
        key = next((k for k in ("cache", "past_key_values") if k in kwargs), None)
        if key is None:  # the cache is not a keyword we can stand in for: hide the entries with the mask only
            kwargs["attention_mask"] = decode_mask(entries, entries.shape[1] - stored, dtype)
            return args, kwargs
        take, mask = chosen_entries(entries, stored)
        kwargs["attention_mask"] = decode_mask(mask, entries.shape[1] - stored, dtype)
        kwargs[key] = ChosenEntries(cache, take)
        return args, kwargs

    def _videos(self, fwd: Forward, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Every video -> its reduced tokens; text and images kept. Returns kept (B, K) and the states."""
        units: list[VideoUnit] = []
        todo: list[list] = []
        plans = []
        for b, videos in enumerate(fwd.images):
            plans.append([])
            for v in videos:
                emb = hidden[b, v.start : v.start + v.n]
                k = self.method.video_budget(v.frames, v.grid)
                entry = [torch.arange(v.n, device=hidden.device), emb]
                if k < v.n:
                    units.append(VideoUnit(emb, v.frames, v.grid, k, self._query(fwd, hidden, b, v.start + v.n)))
                    todo.append(entry)
                plans[-1].append((v, [entry]))
        for entry, (loc, red) in zip(todo, self.method.reduce_videos(units), strict=True):
            entry[0], entry[1] = loc, red
        rows = [_assemble(hidden[b], row) for b, row in enumerate(plans)]
        _same_count(torch.tensor([len(idx) for idx, _x in rows]), "keep different numbers of tokens")
        return torch.stack([idx for idx, _x in rows]), torch.stack([x for _idx, x in rows])

    def _query(self, fwd: Forward, hidden: Tensor, b: int, end: int) -> Tensor | None:
        """The embeddings of the row's real tokens after the video (the question), for query-aware methods."""
        if not self.method.needs_query:
            return None
        after = hidden[b, end:]
        if fwd.valid is not None:
            after = after[fwd.valid[b, end:]]
        return after


def _video_flags(fwd: Forward, n: int, device: torch.device) -> Tensor:
    """(B, n) the original tokens that are video tokens (each video's run; not OneVision's trailing newline)."""
    flags = torch.zeros(len(fwd.images), n, dtype=torch.bool, device=device)
    for b, videos in enumerate(fwd.images):
        for v in videos:
            flags[b, v.start : v.start + v.n] = True
    return flags


def _prune_earlier(cache, index: int) -> None:
    """Layers < ``index`` keep only the entries layer ``index`` holds (PruneVid's KV pruning): their stored keys
    and values are gathered and their maps replaced by layer ``index``'s."""
    prov = layer_map(cache, index)
    for j in range(index):
        prev = layer_map(cache, j)
        if prev is None or bool((prev.index < 0).any()):
            raise ValueError("the video KV stage cannot follow a KV press that already compressed earlier layers")
        pos = torch.searchsorted(prev.index.contiguous(), prov.index.contiguous()).clamp(max=prev.length - 1)
        if not torch.equal(prev.index.gather(1, pos), prov.index):
            raise ValueError("the video KV stage cannot follow a KV press that already compressed earlier layers")
        k, v = layer_kv(cache, j)
        idx = pos[:, None, :, None]
        set_layer_kv(cache, j, k.gather(2, idx.expand(-1, k.shape[1], -1, k.shape[3])),
                     v.gather(2, idx.expand(-1, v.shape[1], -1, v.shape[3])))
        set_layer_map(cache, j, prov)
