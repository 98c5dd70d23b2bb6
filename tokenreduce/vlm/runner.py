"""Forward hooks that apply a visual-token method to a Hugging Face VLM (no model code is copied or replaced).

Prefill: the outer model's pre-hook asks the family adapter where each image's placeholder run is; the
vision block's hook records [CLS] attention when a method needs it; decoder-layer pre-hooks shrink the
sequence at the method's layers (layer 0 for ``before`` methods) and hand every later layer the matching
rows of the position embeddings, position ids and mask. Each layer records on the cache which original
token each entry stands for (a :class:`~tokenreduce.core.provenance.Provenance` map per layer, since inside
methods shorten only later layers; a KV press composes with the same maps). Decode: pre-hooks map masks
and positions through those maps, once. Nothing here depends on the family beyond
:class:`~.families.base.VLMFamily`'s hooks.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.provenance import Provenance, layer_map, set_layer_map
from ..kv.cache import cache_of
from .families.base import Image, VLMFamily, has_images, image_features
from .methods import BeforeMethod, InsideMethod, Mask, Stage, Unit, VisualMethod
from .state import (
    CLS_ATTR,
    CURRENT,
    ROWS,
    Forward,
    decode_mask,
    gather_mask,
    gather_tokens,
)


def _entries(cache, layer: int = 0) -> int:
    """Entries ``layer`` of ``cache`` holds."""
    return cache.get_seq_length(layer)


def _empty(cache) -> bool:
    return cache is None or len(cache.layers) == 0 or cache.get_seq_length() == 0


def _same_count(counts: Tensor, what: str) -> None:
    if len(set(counts.tolist())) > 1:
        raise ValueError(f"rows {what}; batch images of the same size together")


class VLMRunner:
    """Hook callbacks for one patched model; all per-call state is in ``state.CURRENT`` or on the cache."""

    def __init__(self, family: VLMFamily, method: VisualMethod):
        self.family, self.method = family, method
        depth = len(family.layers)
        if isinstance(method, InsideMethod):
            method.check(depth)
            self.stages = dict(zip(method.stages(depth), range(99)))
            if method.before_llm is not None:  # a first stage before the LLM (layer 0)
                self.stages[0] = -1
        else:
            self.stages = {0: 0}
        family.check(method)

    def attn_layers(self) -> list[int]:
        """Decoder layers whose attention input ``attn_pre`` records (the layer before each inside stage)."""
        return sorted(s - 1 for s in self.stages if s > 0)

    # ---- outer model and vision tower -------------------------------------------------------------
    def outer_pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not has_images(kwargs) or not _empty(cache_of(kwargs)):
            CURRENT.set(None)
            return self._decode_positions(ids, args, kwargs)
        if ids is None:
            raise ValueError("visual-token reduction needs input_ids (to find the image tokens), not inputs_embeds")
        rows = self.family.images(ids, kwargs)
        fwd = Forward(rows, visual=ids == self.family.image_token_id, n=ids.shape[1])
        feats = image_features(kwargs)
        if feats is not None and self.method.needs_cls:  # generate() encoded the images before this call
            cls = getattr(feats, CLS_ATTR, None)
            if cls is None:
                raise ValueError(f"{self.method.name}: the image features were computed before the model was patched")
            fwd.cls.append(self.family.cls_for_features(cls, feats))
        CURRENT.set(fwd)
        return None

    def _decode_positions(self, ids: Tensor | None, args, kwargs: dict):
        """The family's true decode positions over a shortened cache, where it has them."""
        cache = cache_of(kwargs)
        first = layer_map(cache, 0)
        if first is None:
            return None
        pos = self.family.decode_positions({**kwargs, "input_ids": ids}, first.tokens(_entries(cache)))
        if pos is None:
            return None
        kwargs["position_ids"] = pos
        return args, kwargs

    def outer_post(self, module, args, kwargs, output):
        CURRENT.set(None)
        return output

    def vision_hook(self, module, args, kwargs, output):
        """One vision block's score row (the method's :meth:`vision_row`), kept until the tower finishes."""
        row = self.method.vision_row(self.family, module, kwargs.get("hidden_states", args[0] if args else None))
        ROWS.set([*(ROWS.get() or []), row])
        return output

    def tower_post(self, module, args, kwargs, output):
        """The tower's rows, combined into one per image: onto the prefill, or onto the tower's output when
        ``generate`` encodes the images before the prefill."""
        rows = ROWS.get()
        ROWS.set(None)
        if not rows:
            return output
        cls = self.method.combine_rows(rows)
        fwd = CURRENT.get()
        if fwd is not None:
            fwd.cls.append(cls)
        else:
            object.__setattr__(output, CLS_ATTR, cls)
        return output

    # ---- projector (pooling before it) ----------------------------------------------------------
    def projector_pre(self, module, args, kwargs):
        """Pool each image's patch features to the method's grid before the projector."""
        feats = kwargs.get("image_features", args[0] if args else None)
        pooled = self.method.pool_features(feats, self.family.feature_grid())
        if pooled is feats:
            return None
        if args:
            return (pooled, *args[1:]), kwargs
        kwargs["image_features"] = pooled
        return args, kwargs

    def projector_post(self, module, args, kwargs, output):
        """Back to one vector per patch (the placeholder count): each patch takes its cell's projected vector."""
        return self.method.unpool_features(output, self.family.feature_grid())

    # ---- language model ---------------------------------------------------------------------------
    def lm_pre(self, module, args, kwargs):
        cache, fwd = cache_of(kwargs), CURRENT.get()
        if fwd is not None:
            mask = kwargs.get("attention_mask")
            fwd.valid = mask.bool() if mask is not None and mask.ndim == 2 else None
            if fwd.valid is not None and not bool(fwd.valid[:, -1].all()):
                CURRENT.set(None)  # the outer post-hook will not run; leave no stale prefill state behind
                raise ValueError("right-padded batch: pad on the left (tokenizer.padding_side = 'left')")
            return None
        first = layer_map(cache, 0)
        if first is None:
            return None
        emb = kwargs.get("inputs_embeds")
        q = (emb if emb is not None else kwargs["input_ids"]).shape[1]
        entries, device = _entries(cache), first.index.device
        seen = first.tokens(entries)  # tokens before this forward
        if kwargs.get("position_ids") is None:  # the model would count from the (shortened) cache length
            kwargs["position_ids"] = first.new_positions(entries, q, device)
        mask = kwargs.get("attention_mask")
        valid = None  # 2D mask over tokens, for layers whose cache is shortened differently
        if mask is None:
            valid = torch.ones(first.index.shape[0], seen + q, dtype=torch.bool, device=device)
        elif mask.ndim == 2 and mask.shape[1] == seen + q:
            valid = mask.bool()
        kwargs["attention_mask"] = first.map_mask(mask, entries, q)  # onto the entries, once
        CURRENT.set(Forward([], valid=valid, n=seen + q))  # decode: per-layer masks only
        return args, kwargs

    def lm_post(self, module, args, kwargs, output):
        fwd = CURRENT.get()  # the maps were recorded by the layers; decode steps need none (see core.provenance)
        if fwd is not None and not fwd.images:
            CURRENT.set(None)
        return output

    def attn_pre(self, module, args, kwargs):
        fwd = CURRENT.get()
        if fwd is not None and fwd.images:
            cos, sin = kwargs["position_embeddings"]
            fwd.attn_in[module.layer_idx] = (kwargs.get("hidden_states", args[0] if args else None), cos, sin)
        return None

    def layer_pre(self, index: int, module, args, kwargs):
        fwd = CURRENT.get()
        if fwd is None:
            return None
        if not fwd.images:
            return self._decode_mask(index, args, kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        if index in self.stages:
            hidden = self._reduce(index, fwd, hidden)
        kept = self._record(index, fwd, hidden, kwargs)
        if fwd.kept is not None:
            kwargs["position_embeddings"] = tuple(gather_tokens(t, fwd.kept) for t in kwargs["position_embeddings"])
            pos = kwargs.get("position_ids")
            if pos is not None:  # 1-D (B, N) or M-RoPE (3, B, N): each kept token keeps its own
                kwargs["position_ids"] = kept.kept_positions(pos)
            kwargs["attention_mask"] = gather_mask(kwargs.get("attention_mask"), fwd.kept)
        if fwd.masked is not None:
            kwargs["attention_mask"] = _hide(kwargs.get("attention_mask"), _current(fwd, fwd.masked), hidden)
        args = (hidden, *args[1:]) if args else args
        if not args:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    @staticmethod
    def _record(index: int, fwd: Forward, hidden: Tensor, kwargs: dict) -> Provenance:
        """Layer ``index``'s map: its entries are the tokens kept so far. Put on the cache before the layer
        caches anything, so a press in this forward composes with it."""
        prov = Provenance.identity(hidden.shape[0], fwd.n, hidden.device)
        if fwd.kept is not None:
            prov = prov.select(fwd.kept)
        if fwd.masked is not None:  # masked entries are not tokens for later queries (decode masks skip them)
            prov = Provenance(prov.index, prov.real & ~_current(fwd, fwd.masked), prov.seen)
        cache = cache_of(kwargs)
        if cache is not None:
            set_layer_map(cache, index, prov)
        return prov

    def _decode_mask(self, index: int, args, kwargs):
        """A decode step on a layer whose cache is shorter than the first layer's gets its own mask."""
        cache, fwd = cache_of(kwargs), CURRENT.get()
        own, first = layer_map(cache, index), layer_map(cache, 0)
        if own is None or first is None or fwd.valid is None:
            return None
        if own.length == first.length and torch.equal(own.real, first.real):
            return None
        entries = own.rewrite_mask(fwd.valid)  # (B, E + q) over this layer's entries
        q = entries.shape[1] - _entries(cache, index)
        kwargs["attention_mask"] = decode_mask(entries, q, kwargs["position_embeddings"][0].dtype)
        return args, kwargs

    # ---- reduction --------------------------------------------------------------------------------
    def _reduce(self, index: int, fwd: Forward, hidden: Tensor) -> Tensor:
        if isinstance(self.method, BeforeMethod):
            kept, hidden = self._before(fwd, hidden, self.method)
        elif index == 0 and self.stages[0] == -1:
            kept, hidden = self._before(fwd, hidden, self.method.before_llm)
        else:
            kept, hidden = self._inside(index, fwd, hidden)
        fwd.kept = kept if fwd.kept is None else fwd.kept.gather(1, kept)
        return hidden

    def _before(self, fwd: Forward, hidden: Tensor, method: BeforeMethod) -> tuple[Tensor, Tensor]:
        """Every image's run -> its reduced tokens by ``method`` (all pieces of all images reduced in one call);
        text is kept. Returns current-index kept (B, K) and the states."""
        cls = torch.cat(fwd.cls) if fwd.cls else None
        units: list[Unit] = []
        todo: list[list] = []  # [run positions, embeddings] entries that wait for their unit's result
        plans: list[list[tuple[Image, list[list]]]] = []  # per row, per image: its kept [positions, embeddings]
        for b, images in enumerate(fwd.images):
            plans.append([])
            for im in images:
                kept: list[list] = []
                for p in self.family.pieces(method, im, cls, hidden.device):
                    emb = hidden[b, im.start + p.pos]
                    if p.k >= len(p.pos):
                        kept.append([p.pos, emb])
                    elif p.k > 0:
                        units.append(Unit(emb, p.grid, p.cls, p.k, _text_after(method, fwd, b, im, hidden)))
                        kept.append([p.pos, None])
                        todo.append(kept[-1])
                plans[-1].append((im, kept))
        for entry, (loc, red) in zip(todo, method.reduce_all(units), strict=True):
            entry[0], entry[1] = entry[0][loc], red
        rows = [_assemble(hidden[b], row) for b, row in enumerate(plans)]
        _same_count(torch.tensor([len(idx) for idx, _x in rows]), "keep different numbers of tokens")
        return torch.stack([idx for idx, _x in rows]), torch.stack([x for _idx, x in rows])

    def _inside(self, index: int, fwd: Forward, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Rank the current visual tokens of every group by the method's scores; keep each group's count."""
        b, n = hidden.shape[:2]
        everything = torch.arange(n, device=hidden.device).expand(b, n)
        cur = fwd.kept if fwd.kept is not None else everything
        vis = fwd.visual.gather(1, cur)
        valid = None if fwd.valid is None else fwd.valid.gather(1, cur)
        _same_count(vis.sum(1), "hold different numbers of visual tokens")
        depth, stage = len(self.family.layers), self.stages[index]
        group, sizes = self.family.groups(fwd.images, fwd.n, hidden.device)
        group = group.gather(1, cur)
        quota = torch.tensor([self.method.counts(m, depth)[stage] for m in sizes], device=hidden.device)
        present = torch.zeros(b, len(sizes), dtype=torch.long, device=hidden.device)
        present.scatter_add_(1, group.clamp(min=0), (group >= 0).long())  # (B, groups) tokens still there
        attn = self.family.layers[index - 1].self_attn
        x, cos, sin = fwd.attn_in[index - 1]
        masked = None if fwd.masked is None else fwd.masked.gather(1, cur)
        keep = self.method.keep_mask(Stage(attn, x, cos, sin, hidden, vis, valid, group, quota, present, masked))
        if keep is None:
            return everything, hidden
        if isinstance(keep, Mask):  # some rows drop tokens, others keep theirs: mask them out from here on
            new = torch.zeros(b, fwd.n, dtype=torch.bool, device=hidden.device).scatter_(1, cur, keep.tokens)
            fwd.masked = new if fwd.masked is None else fwd.masked | new
            return everything, hidden
        _same_count(keep.sum(1), "keep different numbers of tokens")
        kept = keep.nonzero()[:, 1].view(b, -1)
        return kept, gather_tokens(hidden, kept)


def _current(fwd: Forward, original: Tensor) -> Tensor:
    """A (B, N) flag over the original tokens, at the current tokens."""
    return original if fwd.kept is None else original.gather(1, fwd.kept)


def _hide(mask: Tensor | None, cols: Tensor, hidden: Tensor) -> Tensor:
    """The layer's 4-D mask with the ``cols`` (B, N) keys hidden from every query but their own (a query with
    no key left would give NaN); a causal boolean mask is built when the model passed none (SDPA)."""
    b, n = cols.shape
    eye = torch.eye(n, dtype=torch.bool, device=cols.device)
    block = cols[:, None, None, :] & ~eye
    if mask is None:
        mask = torch.ones(n, n, dtype=torch.bool, device=cols.device).tril()[None, None].expand(b, 1, n, n)
    if mask.dtype == torch.bool:
        return mask & ~block
    return mask.masked_fill(block, torch.finfo(mask.dtype).min)


def _text_after(method: VisualMethod, fwd: Forward, b: int, im: Image, hidden: Tensor) -> Tensor | None:
    """Embeddings of row ``b``'s text after image ``im`` (the instruction), for methods that read it."""
    if not method.needs_text:
        return None
    after = ~fwd.visual[b, im.start + im.n :]
    if fwd.valid is not None:
        after &= fwd.valid[b, im.start + im.n :]
    return hidden[b, im.start + im.n :][after]


def _assemble(hidden: Tensor, images: list[tuple[Image, list[list]]]) -> tuple[Tensor, Tensor]:
    """One row's kept indices (ascending) and states: its text, and each image's kept run positions."""
    idx, x, cursor = [], [], 0
    for im, kept in images:
        idx.append(torch.arange(cursor, im.start, device=hidden.device))
        x.append(hidden[cursor : im.start])
        pos = torch.cat([p for p, _e in kept])
        order = torch.argsort(pos)
        idx.append(pos[order] + im.start)
        x.append(torch.cat([e for _p, e in kept])[order])
        cursor = im.start + im.n
    idx.append(torch.arange(cursor, hidden.shape[0], device=hidden.device))
    x.append(hidden[cursor:])
    return torch.cat(idx), torch.cat(x)
