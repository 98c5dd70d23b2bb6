"""KVzip's scoring pass and cache compression (the paper and the parameters: :mod:`tokenreduce.kv.presses.kvzip`).

The context's real tokens are reconstructed ``chunk`` at a time: each pass feeds ``prompt + chunk``
(left-padded per row) after a copy of the full context cache, and a forward hook on every attention
module recomputes the chunk tokens' queries (no eager attention) against the cached keys, chunk
included, so the softmax is the model's own. Memory is O((prompt + chunk) x (N + prompt + chunk)) per
head. Each context entry keeps the maximum attention over the chunk queries and its GQA group; the
copies (with the reconstruction entries) are dropped, the original cache keeps only the best entries.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn
from transformers import AttentionInterface
from transformers.cache_utils import DynamicLayer
from transformers.integrations.sdpa_attention import sdpa_attention_forward
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from . import cache as kvc
from . import scoring
from .hooks import attention_modules, keep_ragged, keep_scored
from .presses import KVzip
from .ragged import select_shared
from .select import protect
from .session import Session


def prompt_ids(press: KVzip, tokenizer=None) -> Tensor:
    """The reconstruction prompt's token ids (P,) (empty without a tokenizer: the context is repeated bare)."""
    if tokenizer is None or not press.prompt:
        return torch.zeros(0, dtype=torch.long)
    return torch.tensor(tokenizer(press.prompt, add_special_tokens=False).input_ids, dtype=torch.long)


def _chunk_inputs(ids: Tensor, valid: Tensor, prompt: Tensor, start: int, chunk: int) -> tuple[Tensor, Tensor, Tensor]:
    """Left-padded ``prompt + real tokens [start, start+chunk)`` per row: ids and mask (B, P+L), and the
    (B, L) mask of the chunk tokens among the last L columns (the reconstruction queries)."""
    rows = [ids[b][valid[b]][start : start + chunk] for b in range(ids.shape[0])]
    length = max(len(r) for r in rows)
    p = len(prompt)
    out = ids.new_zeros(ids.shape[0], p + length)
    mask = torch.zeros_like(out)
    queries = torch.zeros(ids.shape[0], length, device=ids.device)
    for b, r in enumerate(rows):
        if len(r):  # a row whose context is used up takes no part in this pass
            seq = torch.cat([prompt.to(ids), r])
            out[b, -len(seq) :], mask[b, -len(seq) :], queries[b, length - len(r) :] = seq, 1, 1.0
    return out, mask, queries


@torch.no_grad()
def reconstruction_scores(
    model: nn.Module, cache, ids: Tensor, mask: Tensor, prompt: Tensor, chunk: int = 512, window: int = 0,
    block: int = 1024,
) -> list[Tensor]:
    """Per layer, the max attention (B, Hkv, N) each of the N context entries in ``cache`` receives from
    the reconstruction queries of its GQA group (``ids``/``mask`` (B, N): the context; the cache is untouched).

    ``window`` > 0 also scores each entry by the square root of the mean attention it gets from the
    context's own last ``window`` queries (SnapKV's observation window, GQA-averaged; recomputed by
    feeding those tokens again after the cache cut before them) and keeps the larger score:
    what the next tokens will read, which the reconstruction alone under-weights. The square root puts
    a mean over many queries on the scale of the reconstruction's per-query maxima.

    Cost: the passes run after a read-only view of the cache (:class:`_ScoringLayer`: one layer's keys
    copied at a time, never the whole cache), and the scores are read inside the model's own attention
    call (:func:`scoring_attention`), which also returns each query row's logsumexp: a reconstruction
    query's attention on a context entry is ``exp(logit - lse)``, so the max over queries needs only the
    context logits, ``block`` query rows at a time -- no softmax matrix, no second attention."""
    mods = attention_modules(model)
    valid = mask.bool()
    n = ids.shape[1]
    state = _PassState(n=n, block=block)
    with scoring_attention_for(model):
        for start in range(0, int(valid.sum(-1).max()), chunk):
            rec, rec_mask, qmask = _chunk_inputs(ids, valid, prompt, start, chunk)
            full = torch.cat([mask.long(), rec_mask], dim=1)
            state.forward(qmask.shape[1], full.bool(), qmask, mean=False)
            Session(model, _scoring_cache(cache, state), mask.long()).feed(rec, rec_mask, last_only=True)
        if window > 0:
            w = min(window, n)
            state.forward(w, valid, mask[:, n - w :].float(), mean=True)
            session = Session(model, _scoring_cache(cache, state, n - w), mask[:, : n - w].long())
            session.feed(ids[:, n - w :], mask[:, n - w :], last_only=True)
    return [state.best[m.layer_idx].masked_fill(~valid[:, None, :], 0.0) for m in mods]


class _PassState:
    """What the attention calls of a scoring pass read (``n`` context entries; per forward: the last ``length``
    query rows score, ``valid`` (B, T) keys, ``qmask`` (B, length) real queries, ``mean`` for the window pass;
    ``block`` query rows at a time) and write (``best``: layer index -> scores (B, Hkv, n); ``memo``: what is
    derived from the forward's mask)."""

    def __init__(self, n: int, block: int):
        self.n, self.block = n, block
        self.best: dict[int, Tensor] = {}
        self.memo: dict = {}
        self.forward(0, None, None, False)

    def forward(self, length: int, valid: Tensor | None, qmask: Tensor | None, mean: bool) -> None:
        """Set up the next forward of the pass."""
        self.length, self.valid, self.qmask, self.mean = length, valid, qmask, mean


class _Scored:
    """What a :class:`_ScoringLayer`'s ``update`` hands to :func:`scoring_attention`: the layer's stored and new
    keys and values (joined only where a masked kernel needs them) and the pass to score for."""

    def __init__(self, stored: tuple[Tensor, Tensor], new: tuple[Tensor, Tensor], layer_idx: int,
                 state: _PassState):
        self.stored, self.new, self.layer_idx, self.state = stored, new, layer_idx, state
        self._joined: tuple[Tensor, Tensor] | None = None

    def joined(self) -> tuple[Tensor, Tensor]:
        """Keys and values (B, Hkv, stored + new, D)."""
        if self._joined is None:
            self._joined = tuple(torch.cat([a, b], dim=-2) for a, b in zip(self.stored, self.new, strict=True))
        return self._joined


class _ScoringLayer(DynamicLayer):
    """A read-only view of a dense layer for a throw-away forward: ``update`` returns a :class:`_Scored` handle
    (the stored entries plus the new ones) and stores nothing, so a pass copies one layer's keys at a time
    instead of growing a second cache; the attention call scores the context entries while attending."""

    def __init__(self, keys: Tensor, values: Tensor, layer_idx: int, state: _PassState):
        super().__init__()
        self.keys, self.values, self.is_initialized = keys, values, True
        self.device, self.dtype = keys.device, keys.dtype
        self.layer_idx, self.state = layer_idx, state

    def update(self, key_states: Tensor, value_states: Tensor, *args, **kwargs):
        handle = _Scored((self.keys, self.values), (key_states, value_states), self.layer_idx, self.state)
        return handle, handle


def _scoring_cache(cache, state: _PassState, length: int | None = None):
    """A read-only view of ``cache`` (its first ``length`` entries if given) whose layers score for ``state``."""
    out = copy.copy(cache)
    out.layers = [_ScoringLayer(*(x[:, :, :length] for x in kvc.layer_kv(cache, i)), i, state)
                  for i in range(kvc.n_layers(cache))]
    return out


def scoring_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The model's attention for a scoring pass (SDPA's result, (B, q, H, D)), scoring the context entries
    on the way: with a :class:`_Scored` key it attends and records the pass's scores for that layer;
    anything else goes to SDPA."""
    if not isinstance(key, _Scored):
        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout,
                                      **kwargs)
    st = key.state
    scale = module.scaling if scaling is None else scaling
    out, lse = _attend(module, query, key, attention_mask, scale, dropout, kwargs, st.memo)
    q = query[:, :, -st.length :]
    if st.mean:
        s = _window_scores(q, key.joined()[0], scale, st.valid, st.qmask, st.n)
    elif lse is None:
        s = _reconstruction_max(q, key.joined()[0], scale, st.valid, st.qmask, st.n, st.block)
    else:  # the reconstruction pass: the stored entries are the n context entries
        s = _max_given_lse(q, key.stored[0], scale, lse[:, :, -st.length :], st.valid, st.qmask, st.n, st.block)
    best = st.best
    best[key.layer_idx] = torch.maximum(best[key.layer_idx], s) if key.layer_idx in best else s
    return out, None


def _attend(module, query: Tensor, key: _Scored, attention_mask: Tensor | None, scale: float, dropout: float,
            kwargs: dict, memo: dict) -> tuple[Tensor, Tensor | None]:
    """Attention output (B, q, H, D) and, where the CPU flash kernel runs it, each query row's logsumexp
    (B, H, q) float32 (None elsewhere: the caller forms it from the logits).

    When the mask shows every stored entry visible to every query and the q new ones causal (no padding
    anywhere: one row, or rows of equal length), the kernel runs twice without a mask -- stored entries,
    then the new ones with its own causal rule -- and the halves are joined by their logsumexps (the
    masked kernel reads a (q, T) mask for every head: about 15 % slower at 8k entries). ``memo`` keeps what
    is derived from the forward's mask (every layer gets the same one)."""
    plain = all(kwargs.get(k) is None for k in ("softcap", "s_aux")) and dropout == 0.0
    if query.device.type != "cpu" or not plain or _FLASH_CPU is None or attention_mask is None:
        out, _ = sdpa_attention_forward(module, query, *key.joined(), attention_mask, scaling=scale, dropout=dropout,
                                        **kwargs)
        return out, None
    (ks, vs), (kn, vn) = key.stored, key.new
    p, q_len = ks.shape[2], query.shape[2]
    additive = _forward_mask(attention_mask, p + kn.shape[2], q_len, query.dtype, memo)
    if additive is not None:
        out, lse = _FLASH_CPU(query, *key.joined(), 0.0, False, attn_mask=additive, scale=scale)
        return out.transpose(1, 2).contiguous(), lse
    out, lse = _FLASH_CPU(query, kn, vn, 0.0, True, scale=scale)
    if p > 0:
        o1, l1 = _FLASH_CPU(query, ks, vs, 0.0, False, scale=scale)
        both = torch.logaddexp(l1, lse)
        out = (o1.float() * (l1 - both).exp_()[..., None] + out.float() * (lse - both).exp_()[..., None])
        out, lse = out.to(query.dtype), both
    return out.transpose(1, 2).contiguous(), lse


def _forward_mask(mask: Tensor, total: int, q_len: int, dtype: torch.dtype, memo: dict) -> Tensor | None:
    """``mask`` (B, 1, q, >= total) as the additive mask (0 / -inf, ``dtype``) the CPU flash kernel takes, or
    None when it is "all stored entries, then causal" (no mask needed)."""
    if memo.get("source") is not mask:
        m = mask[:, :, :, :total]
        seen = m if m.dtype == torch.bool else m == 0
        p = total - q_len
        causal = torch.ones(q_len, q_len, dtype=torch.bool, device=m.device).tril_()
        if bool(seen[..., :p].all()) and torch.equal(seen[..., p:], causal.expand_as(seen[..., p:])):
            additive = None
        else:
            additive = torch.zeros(seen.shape, dtype=dtype, device=m.device).masked_fill_(~seen, float("-inf"))
        memo.update(source=mask, additive=additive)
    return memo["additive"]


_FLASH_CPU = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)


def _max_given_lse(q: Tensor, keys: Tensor, scaling: float, lse: Tensor, valid: Tensor, qmask: Tensor, n: int,
                   block: int, tile: int = 1024) -> Tensor:
    """:func:`_reconstruction_max` given each query row's logsumexp ``lse`` (B, H, L) over all its keys (the
    attention kernel's own): ``logit - lse`` comes out of one matmul (the query rows get a last channel
    ``-lse``, the keys a last channel 1), ``block`` query rows by ``tile`` context entries at a time (the
    tile stays in cache for the max), and only the max over rows is kept."""
    bsz, h, length, d = q.shape
    hkv = keys.shape[1]
    g = h // hkv
    off = lse.float().masked_fill(qmask[:, None, :] == 0, _NOTHING)  # padding queries: attention 0
    qs = torch.cat([(q.to(keys.dtype) * scaling).float(), -off[..., None]], dim=-1)  # float32: lse is float32
    qs = qs.reshape(bsz, hkv, g * length, d + 1)  # row = group member * L + query
    ctx = torch.cat([keys[:, :, :n].float(), keys.new_ones(bsz, hkv, n, 1, dtype=torch.float32)], dim=-1)
    ctx = ctx.transpose(-1, -2)
    ctx_off = ~valid[:, :n]
    any_off = bool(ctx_off.any())
    best = torch.empty(bsz, hkv, n, device=keys.device)
    for c in range(0, n, tile):
        e = min(n, c + tile)
        for s in range(0, g * length, block):
            part = torch.matmul(qs[:, :, s : s + block], ctx[..., c:e]).amax(dim=2)  # (B, Hkv, tile)
            best[..., c:e] = part if s == 0 else torch.maximum(best[..., c:e], part)
        if any_off:
            best[..., c:e].masked_fill_(ctx_off[:, None, c:e], float("-inf"))
    return best.exp_()


_NOTHING = 1e30  # a logsumexp that makes exp(logit - lse) exactly 0 (finite: no inf * 0 inside the matmul)


NAME = "tokenreduce_kvzip"
AttentionInterface.register(NAME, scoring_attention)
AttentionMaskInterface.register(NAME, sdpa_mask)


@contextmanager
def scoring_attention_for(model) -> Iterator[None]:
    """Route the model's attention through :func:`scoring_attention` for the scoring passes."""
    old = model.config._attn_implementation
    model.config._attn_implementation = NAME
    try:
        yield
    finally:
        model.config._attn_implementation = old


def _reconstruction_max(q: Tensor, keys: Tensor, scaling: float, valid: Tensor, qmask: Tensor, n: int,
                        block: int) -> Tensor:
    """Max attention (B, Hkv, n) the first n keys get from the queries ``q`` (B, H, L, D) -- the last L of the
    T = ``keys.shape[2]`` positions, causal among the T - n after the context -- over each GQA group;
    ``valid`` (B, T) real keys, ``qmask`` (B, L) real queries (padding queries give nothing).

    attention = exp(logit - lse), lse the row's logsumexp over all T keys, so the max over queries is
    exp(max(logit - lse)): only logits are formed, ``block`` query rows at a time."""
    bsz, h, length, d = q.shape
    hkv, total = keys.shape[1], keys.shape[2]
    g = h // hkv
    qs = (q.to(keys.dtype) * scaling).reshape(bsz, hkv, g * length, d)  # row = group member * L + query
    ctx, tail = keys[:, :, :n], keys[:, :, n:]
    t = total - n  # prompt + chunk: query i sees tail keys <= t - length + i
    pos = torch.arange(length, device=keys.device) + t - length
    after = torch.arange(t, device=keys.device)[None, :] > pos[:, None]
    hidden_tail = after[None] | ~valid[:, None, n:]  # (B, L, t)
    ctx_off = ~valid[:, :n]
    any_off = bool(ctx_off.any())
    best = None
    for s in range(0, g * length, block):
        rows = qs[:, :, s : s + block]  # (B, Hkv, r, D)
        qi = torch.arange(s, s + rows.shape[2], device=keys.device) % length  # each row's query
        lc = torch.matmul(rows, ctx.transpose(-1, -2)).float()  # (B, Hkv, r, n)
        if any_off:
            lc.masked_fill_(ctx_off[:, None, None, :], float("-inf"))
        lt = torch.matmul(rows, tail.transpose(-1, -2)).float().masked_fill_(hidden_tail[:, None, qi], float("-inf"))
        lse = torch.logaddexp(torch.logsumexp(lc, -1), torch.logsumexp(lt, -1))  # (B, Hkv, r)
        lse = lse.masked_fill(qmask[:, None, qi] == 0, float("inf"))  # padding queries: attention 0
        part = lc.sub_(lse[..., None]).amax(dim=2)  # (B, Hkv, n): over these rows (queries and group members)
        best = part if best is None else torch.maximum(best, part)
    return best.exp_().nan_to_num_(0.0)


def _window_scores(q: Tensor, keys: Tensor, scaling: float, valid: Tensor, qmask: Tensor, n: int) -> Tensor:
    """sqrt of the mean attention (B, Hkv, n) of the real window queries ``q`` (the last L of the n keys),
    GQA-averaged."""
    bsz, length = q.shape[0], q.shape[2]
    a = scoring.window_attention(q, keys, scaling, valid, q_offset=n - length) * qmask[:, None, :, None]
    mean = a.sum(dim=2) / qmask.sum(-1).clamp(min=1.0)[:, None, None]
    return mean.view(bsz, keys.shape[1], -1, n).mean(dim=2).sqrt()


@torch.no_grad()
def compress_cache(
    model: nn.Module, cache, ids: Tensor, mask: Tensor | None, press: KVzip, prompt: Tensor | None = None,
    scores: list[Tensor] | None = None,
):
    """Compress the full context cache (of ``ids`` (B, N), left-padded by ``mask``) in place with KVzip scores.

    ``scores``: :func:`reconstruction_scores` of this cache, context, prompt, ``chunk`` and ``window``,
    computed once by a caller that compresses the same cache at several keeps (they do not depend on keep)."""
    mask = torch.ones_like(ids) if mask is None else mask
    if kvc.get_state(cache) is not None or kvc.seq_length(cache) != ids.shape[1]:
        raise ValueError("kvzip needs the uncompressed cache of exactly the given context")
    prompt = ids.new_zeros(0) if prompt is None else prompt
    if scores is None:
        scores = reconstruction_scores(model, cache, ids, mask, prompt, press.chunk, press.window)
    mods, valid = attention_modules(model), mask.bool()
    scores = [protect(s, valid, press.sinks, press.recent) for s in scores]
    if press.budget == "global":
        kept = select_shared(torch.stack(scores), valid, float(press.keep), press.min_share)
        for m, idx in zip(mods, kept, strict=True):
            prefix = keep_ragged(cache, m.layer_idx, *kvc.layer_kv(cache, m.layer_idx), idx)
    else:
        for m, s in zip(mods, scores, strict=True):
            keys, values = kvc.layer_kv(cache, m.layer_idx)
            prefix = keep_scored(press, cache, m.layer_idx, len(mods), keys, values, s, valid)
    kvc.set_state(cache, kvc.KVState(prefix, ids.shape[1]))
    return cache
