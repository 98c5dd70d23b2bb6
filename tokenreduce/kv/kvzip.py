"""KVzip's scoring pass and cache compression (the paper and the parameters: :mod:`tokenreduce.kv.presses.kvzip`).

The context's real tokens are reconstructed ``chunk`` at a time: each pass feeds ``prompt + chunk``
(left-padded per row) after a copy of the full context cache, and a forward hook on every attention
module recomputes the chunk tokens' queries (no eager attention) against the cached keys, chunk
included, so the softmax is the model's own. Memory is O((prompt + chunk) x (N + prompt + chunk)) per
head. Each context entry keeps the maximum attention over the chunk queries and its GQA group; the
copies (with the reconstruction entries) are dropped, the original cache keeps only the best entries.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

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

    Cost: the passes run after a read-only view of the cache (:func:`tokenreduce.kv.cache.passing`), so
    only one layer's keys are copied at a time, never the whole cache; a reconstruction query's attention
    on a context entry is ``exp(logit - logsumexp(row))``, so the max over queries is taken on the logits
    (``block`` query rows at a time) and no softmax matrix is materialized."""
    mods = attention_modules(model)
    valid = mask.bool()
    b, n = ids.shape
    best: dict[int, Tensor] = {}
    current: dict[str, Tensor] = {}

    def hook(mod, args, kwargs, out):
        hidden = kwargs.get("hidden_states", args[0] if args else None)
        cos, sin = kwargs["position_embeddings"]
        keys, _ = kvc.take_last(current["cache"], mod.layer_idx)
        length = current["length"]
        q = scoring.window_queries(mod, hidden[:, -length:], cos[:, -length:], sin[:, -length:])
        if current["mean"]:
            s = _window_scores(q, keys, mod.scaling, current["valid"], current["qmask"], n)
        else:
            s = _reconstruction_max(q, keys, mod.scaling, current["valid"], current["qmask"], n, block)
        best[mod.layer_idx] = torch.maximum(best[mod.layer_idx], s) if mod.layer_idx in best else s
        return out

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in mods]
    try:
        for start in range(0, int(valid.sum(-1).max()), chunk):
            rec, rec_mask, qmask = _chunk_inputs(ids, valid, prompt, start, chunk)
            session = Session(model, kvc.passing(cache), mask.long())
            full = torch.cat([mask.long(), rec_mask], dim=1)
            current.update(cache=session.cache, length=qmask.shape[1], valid=full.bool(), qmask=qmask, mean=False)
            session.feed(rec, rec_mask, last_only=True)
        if window > 0:
            w = min(window, n)
            session = Session(model, kvc.passing(cache, n - w), mask[:, : n - w].long())
            current.update(cache=session.cache, length=w, valid=valid, qmask=mask[:, n - w :].float(), mean=True)
            session.feed(ids[:, n - w :], mask[:, n - w :], last_only=True)
    finally:
        for h in handles:
            h.remove()
    return [best[m.layer_idx].masked_fill(~valid[:, None, :], 0.0) for m in mods]


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
    model: nn.Module, cache, ids: Tensor, mask: Tensor | None, press: KVzip, prompt: Tensor | None = None
):
    """Compress the full context cache (of ``ids`` (B, N), left-padded by ``mask``) in place with KVzip scores."""
    mask = torch.ones_like(ids) if mask is None else mask
    if kvc.get_state(cache) is not None or kvc.seq_length(cache) != ids.shape[1]:
        raise ValueError("kvzip needs the uncompressed cache of exactly the given context")
    prompt = ids.new_zeros(0) if prompt is None else prompt
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
