"""Forward hooks that apply a visual-token method to a Hugging Face VLM (no model code is copied or replaced).

Prefill: the outer model's pre-hook finds each image's placeholder run; the vision tower's hook records
[CLS] attention when a method needs it; decoder-layer pre-hooks shrink the sequence at the method's
layers (layer 0 for ``before`` methods) and hand every later layer the matching rows of the position
embeddings, position ids and mask. Decode: the cache remembers which original token each entry stands
for (per layer, since inside methods shorten only later layers), and pre-hooks map masks and positions.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..kv.scoring import window_attention, window_keys, window_queries
from . import next as NX
from . import state as S
from .families import VLMParts, cls_attention, has_images, image_features, image_grids, images_in_row
from .methods import BeforeMethod, InsideMethod, VisualMethod


def _cache(kwargs: dict):
    return kwargs.get("cache", kwargs.get("past_key_values"))


def _empty(cache) -> bool:
    return cache is None or len(cache.layers) == 0 or cache.get_seq_length() == 0


class VLMRunner:
    """Hook callbacks for one patched model; all per-call state is in ``state.CURRENT`` or on the cache."""

    def __init__(self, parts: VLMParts, method: VisualMethod):
        self.parts, self.method = parts, method
        depth = len(parts.layers)
        if isinstance(method, InsideMethod):
            method.check(depth)
            self.stages = dict(zip(method.stages(depth), range(99)))
        else:
            self.stages = {0: 0}
        NX.check(parts, method)
        if method.needs_cls and parts.cls_module is None:
            raise ValueError(
                f"{method.name} ranks tokens by the vision tower's [CLS] attention; {parts.kind}: no [CLS]"
            )

    # ---- outer model and vision tower -------------------------------------------------------------
    def outer_pre(self, module, args, kwargs):
        ids = kwargs.get("input_ids", args[0] if args else None)
        if not has_images(kwargs) or not _empty(_cache(kwargs)):
            S.CURRENT.set(None)
            return self._decode_positions(args, kwargs)
        if ids is None:
            raise ValueError("visual-token reduction needs input_ids (to find the image tokens), not inputs_embeds")
        layouts = NX.image_layouts(self.parts, kwargs) if self.parts.kind == "llava-next" else None
        grids = image_grids(self.parts, kwargs) if layouts is None else [lay.grid for lay in layouts]
        rows = []
        for r in range(ids.shape[0]):
            rows.append(images_in_row(self.parts, ids[r], grids[sum(len(x) for x in rows) :]))
        if sum(len(x) for x in rows) != len(grids):
            raise ValueError(f"{len(grids)} images given but {sum(len(x) for x in rows)} placeholder runs found")
        if layouts is not None:
            rows = NX.attach(rows, layouts)
        fwd = S.Forward(rows, visual=ids == self.parts.image_token_id, n=ids.shape[1])
        feats = image_features(kwargs)
        if feats is not None and self.method.needs_cls:  # generate() encoded the images before this call
            cls = getattr(feats, S.CLS_ATTR, None)
            if cls is None:
                raise ValueError(f"{self.method.name}: the image features were computed before the model was patched")
            fwd.cls.append(cls if layouts is not None else _per_image(cls, feats.pooler_output))
        S.CURRENT.set(fwd)
        return None

    def _decode_positions(self, args, kwargs):
        """Qwen2-VL derives decode positions from the cache length when none are given; give the true ones."""
        st = S.get_state(_cache(kwargs))
        if st is None or self.parts.kind != "qwen2-vl" or kwargs.get("position_ids") is not None:
            return None
        if kwargs.get("attention_mask") is not None or getattr(self.parts.outer, "rope_deltas", None) is None:
            return None  # with a mask the model counts positions from it, which is right
        ids = kwargs.get("input_ids", args[0] if args else None)
        ref = ids if ids is not None else kwargs["inputs_embeds"]
        b, q = ref.shape[:2]
        pos = torch.arange(st.seen, st.seen + q, device=ref.device).view(1, 1, q).expand(3, b, q)
        kwargs["position_ids"] = pos + self.parts.outer.rope_deltas.to(ref.device).view(1, -1, 1)
        return args, kwargs

    def outer_post(self, module, args, kwargs, output):
        S.CURRENT.set(None)
        return output

    def vision_hook(self, module, args, kwargs, output):
        cls = cls_attention(module, kwargs.get("hidden_states", args[0] if args else None))
        cls = cls[:, 1:] if self.parts.strip_cls else cls
        fwd = S.CURRENT.get()
        if fwd is not None:
            fwd.cls.append(cls)
        else:
            S.PENDING_CLS.set(cls)
        return output

    def tower_post(self, module, args, kwargs, output):
        cls = S.PENDING_CLS.get()
        if cls is not None:
            object.__setattr__(output, S.CLS_ATTR, cls)
            S.PENDING_CLS.set(None)
        return output

    # ---- language model ---------------------------------------------------------------------------
    def lm_pre(self, module, args, kwargs):
        cache, fwd = _cache(kwargs), S.CURRENT.get()
        if fwd is not None:
            mask = kwargs.get("attention_mask")
            fwd.valid = mask.bool() if mask is not None and mask.ndim == 2 else None
            if fwd.valid is not None and not bool(fwd.valid[:, -1].all()):
                S.CURRENT.set(None)  # the outer post-hook will not run; leave no stale prefill state behind
                raise ValueError("right-padded batch: pad on the left (tokenizer.padding_side = 'left')")
            return None
        st = S.get_state(cache)
        if st is None:
            return None
        emb = kwargs.get("inputs_embeds")
        q = (emb if emb is not None else kwargs["input_ids"]).shape[1]
        mask = kwargs.get("attention_mask")
        if kwargs.get("position_ids") is None:  # the model would count from the (shortened) cache length
            kwargs["position_ids"] = torch.arange(st.seen, st.seen + q, device=st.cols[0].device)[None]
        b, device = st.cols[0].shape[0], st.cols[0].device
        if mask is not None and mask.ndim == 2:
            new = torch.arange(st.seen, st.seen + q, device=device).expand(b, q)
            kwargs["attention_mask"] = mask.gather(1, torch.cat([st.cols[0], new], 1))
        full = torch.ones(b, st.seen + q, dtype=torch.bool, device=device)
        valid = mask.bool() if mask is not None and mask.ndim == 2 else full
        S.CURRENT.set(S.Forward([], valid=valid, n=st.seen + q))  # decode: per-layer masks only
        return args, kwargs

    def lm_post(self, module, args, kwargs, output):
        cache, fwd = getattr(output, "cache", None), S.CURRENT.get()
        cache = _cache(kwargs) if cache is None else cache
        if cache is None:
            return output
        st = S.get_state(cache)
        if fwd is not None and fwd.images:  # prefill: record what each layer cached
            b = len(fwd.images)
            full = torch.arange(fwd.n, device=fwd.visual.device).expand(b, fwd.n)
            cols = [fwd.cols.get(i, full) for i in range(len(self.parts.layers))]
            S.set_state(cache, S.CacheState(cols, fwd.n))
        elif st is not None:
            q = output.last_hidden_state.shape[1]
            new = torch.arange(st.seen, st.seen + q, device=st.cols[0].device).expand(st.cols[0].shape[0], q)
            S.set_state(cache, S.CacheState([torch.cat([c, new], 1) for c in st.cols], st.seen + q))
        if fwd is not None and not fwd.images:
            S.CURRENT.set(None)
        return output

    def attn_pre(self, module, args, kwargs):
        fwd = S.CURRENT.get()
        if fwd is not None and fwd.images:
            cos, sin = kwargs["position_embeddings"]
            fwd.attn_in[module.layer_idx] = (kwargs.get("hidden_states", args[0] if args else None), cos, sin)
        return None

    def layer_pre(self, index: int, module, args, kwargs):
        fwd = S.CURRENT.get()
        if fwd is None:
            return None
        if not fwd.images:
            return self._decode_mask(index, args, kwargs)
        hidden = args[0] if args else kwargs["hidden_states"]
        if index in self.stages:
            hidden = self._reduce(index, fwd, hidden)
        if fwd.kept is not None:
            fwd.cols[index] = fwd.kept
            kwargs["position_embeddings"] = tuple(S.gather_tokens(t, fwd.kept) for t in kwargs["position_embeddings"])
            pos = kwargs.get("position_ids")
            if pos is not None:
                kwargs["position_ids"] = S.gather_tokens(pos, fwd.kept, pos.ndim - 1)
            kwargs["attention_mask"] = S.gather_mask(kwargs.get("attention_mask"), fwd.kept)
        args = (hidden, *args[1:]) if args else args
        if not args:
            kwargs["hidden_states"] = hidden
        return args, kwargs

    def _decode_mask(self, index: int, args, kwargs):
        """A decode step on a layer whose cache is shorter than the first layer's gets its own mask."""
        cache, fwd = _cache(kwargs), S.CURRENT.get()
        st = S.get_state(cache)
        if st is None or fwd.valid is None or st.cols[index].shape[1] == st.cols[0].shape[1]:
            return None
        q = fwd.n - st.seen
        dtype = kwargs["position_embeddings"][0].dtype
        kwargs["attention_mask"] = S.decode_mask(fwd.valid, st.cols[index], st.seen, q, dtype)
        return args, kwargs

    # ---- reduction --------------------------------------------------------------------------------
    def _reduce(self, index: int, fwd: S.Forward, hidden: Tensor) -> Tensor:
        if isinstance(self.method, BeforeMethod):
            kept, hidden = self._before(fwd, hidden)
        else:
            kept, hidden = self._inside(index, fwd, hidden)
        fwd.kept = kept if fwd.kept is None else fwd.kept.gather(1, kept)
        return hidden

    def _before(self, fwd: S.Forward, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Each image's run -> its reduced tokens; text is kept. Returns current-index kept (B, K) and states."""
        cls = torch.cat(fwd.cls) if fwd.cls else None
        rows_idx, rows_x, img = [], [], 0
        for b, images in enumerate(fwd.images):
            idx_parts, x_parts, cursor = [], [], 0
            for im in images:
                idx_parts.append(torch.arange(cursor, im.start, device=hidden.device))
                x_parts.append(hidden[b, cursor : im.start])
                emb = hidden[b, im.start : im.start + im.n]
                k = self.method.budget(im.n)
                if im.layout is not None:  # LLaVA-NeXT: crop by crop
                    loc, red = NX.reduce_image(self.method, emb, im.layout, cls)
                elif k >= im.n:
                    loc, red = torch.arange(im.n, device=hidden.device), emb
                else:
                    loc, red = self.method.reduce(emb, im.grid, None if cls is None else cls[img], k)
                idx_parts.append(loc + im.start)
                x_parts.append(red)
                cursor, img = im.start + im.n, img + 1
            idx_parts.append(torch.arange(cursor, hidden.shape[1], device=hidden.device))
            x_parts.append(hidden[b, cursor:])
            rows_idx.append(torch.cat(idx_parts))
            rows_x.append(torch.cat(x_parts))
        if len({len(r) for r in rows_idx}) > 1:
            raise ValueError("rows keep different numbers of tokens; batch images of the same size together")
        return torch.stack(rows_idx), torch.stack(rows_x)

    def _inside(self, index: int, fwd: S.Forward, hidden: Tensor) -> tuple[Tensor, Tensor]:
        """Rank the current visual tokens by attention of the previous layer; keep the method's count."""
        b, n = hidden.shape[:2]
        cur = fwd.kept if fwd.kept is not None else torch.arange(n, device=hidden.device).expand(b, n)
        vis = fwd.visual.gather(1, cur)
        valid = None if fwd.valid is None else fwd.valid.gather(1, cur)
        n_vis = vis.sum(1)
        if len(set(n_vis.tolist())) > 1:
            raise ValueError("rows hold different numbers of visual tokens; batch images of the same size together")
        total = int(fwd.visual[0].sum())
        depth, stage = len(self.parts.layers), self.stages[index]
        k = self.method.counts(total, depth)[stage]
        if self.parts.kind == "llava-next":  # per-crop budgets; newlines stay
            group, sizes = NX.groups(fwd.images, fwd.n, hidden.device)
            group = group.gather(1, cur)
            if all(self.method.counts(m, depth)[stage] >= m for m in sizes):
                return torch.arange(n, device=hidden.device).expand(b, n), hidden
            scores = self._scores(index - 1, vis, valid)
            keep = NX.inside_keep(group, sizes, scores, lambda m: self.method.counts(m, depth)[stage])
        else:
            if k >= int(n_vis[0]):
                return torch.arange(n, device=hidden.device).expand(b, n), hidden
            scores = self._scores(index - 1, vis, valid)
            scores = scores.masked_fill(~vis, float("-inf"))
            top = torch.topk(scores, k, dim=1, sorted=False).indices
            keep = ~vis
            keep.scatter_(1, top, True)
        if len(set(keep.sum(1).tolist())) > 1:
            raise ValueError("rows keep different numbers of tokens; batch images of the same size together")
        kept = keep.nonzero()[:, 1].view(b, -1)
        return kept, S.gather_tokens(hidden, kept)

    def _scores(self, layer: int, vis: Tensor, valid: Tensor | None) -> Tensor:
        """Head-averaged attention (B, N) the rating queries of ``layer`` pay to each current token."""
        fwd = S.CURRENT.get()
        attn = self.parts.layers[layer].self_attn
        x, cos, sin = fwd.attn_in[layer]
        b, n = vis.shape
        keys = window_keys(attn, x, cos, sin)
        if self.method.window == "last":
            q = window_queries(attn, x[:, -1:], cos[:, -1:], sin[:, -1:])
            return window_attention(q, keys, attn.scaling, valid).mean(1)[:, -1]
        pos = torch.arange(n, device=vis.device)
        last_vis = torch.where(vis, pos, -1).max(1).values  # (B,)
        w = max(1, int((n - 1 - last_vis).max()))
        q = window_queries(attn, x[:, -w:], cos[:, -w:], sin[:, -w:])
        a = window_attention(q, keys, attn.scaling, valid).mean(1)  # (B, w, N)
        qpos = pos[-w:]
        rater = qpos[None] > last_vis[:, None]
        if valid is not None:
            rater &= valid[:, -w:]
        mass = (a * vis[:, None].float()).sum(-1)
        mean = (mass * rater).sum(1, keepdim=True) / rater.sum(1, keepdim=True).clamp(min=1)
        rater &= mass >= mean
        rater[:, -1] |= ~rater.any(1)  # no text after the image: the last token rates, as in FastV
        return (a * rater[..., None]).sum(1) / rater.sum(1, keepdim=True).clamp(min=1)


def _per_image(cls: Tensor, feats) -> Tensor:
    """[CLS] rows in placeholder order. Beam search repeats each row's images (``[A, B] -> [A, B, A, B]``)
    but not the tower's output; repeated images are the same (or equal) feature tensors, so map each
    to the first occurrence, whose order is the tower's."""
    if cls.shape[0] == len(feats):
        return cls
    firsts: list[Tensor] = []
    index = []
    for f in feats:
        u = next((i for i, g in enumerate(firsts) if g is f or (g.shape == f.shape and torch.equal(g, f))), None)
        if u is None:
            firsts.append(f)
            u = len(firsts) - 1
        index.append(u)
    if len(firsts) != cls.shape[0]:
        raise ValueError(f"{len(feats)} image features but {cls.shape[0]} [CLS] rows; cannot match them")
    return cls[torch.tensor(index, device=cls.device)]
