"""KV-press quality on a real model: KL to the full cache, continuation perplexity, passkey retrieval.

One full prefill per sample is captured (per-layer attention inputs + the full cache); every press then
compresses a copy of that cache with the same code path the hooks use, so presses are compared on
identical prefills and the benchmark costs one prefill per sample, not one per press.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import fmean

import torch
from torch import Tensor, nn

from . import cache as kvc
from .data import Sample
from .gemfilter import gemfilter_ids
from .generate import generate_ids
from .hooks import apply_press, attention_modules, compress_layer
from .kvzip import compress_cache, prompt_ids, reconstruction_scores
from .presses import KVzip, Press, ReconstructionPress, label
from .ragged import RaggedLayer, ragged_attention_for
from .session import Session, greedy, prefill


@dataclass
class Prefill:
    cache: object
    inputs: dict[int, tuple[Tensor, Tensor, Tensor]]  # layer -> (hidden, cos, sin) of the prefill
    logits: Tensor  # (1, N, V) logits of the prefill (only the last row is used)
    n: int
    ids: Tensor | None = None  # (1, N) the prompt (KVzip reconstructs it)


@torch.no_grad()
def capture_prefill(model: nn.Module, ids: Tensor) -> Prefill:
    """Full prefill of ``ids`` (1, N), keeping each attention layer's inputs for offline pressing."""
    inputs: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def hook(mod, args, kwargs, out):
        cos, sin = kwargs["position_embeddings"]
        inputs[mod.layer_idx] = (kwargs.get("hidden_states", args[0] if args else None), cos, sin)

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in attention_modules(model)]
    try:
        session = Session(model, kvc.new_cache(model), ids[:, :0])
        logits = session.feed(ids, last_only=True)
    finally:
        for h in handles:
            h.remove()
    return Prefill(session.cache, inputs, logits[:, -1:], ids.shape[1], ids)


@torch.no_grad()
def press_cache(model: nn.Module, pre: Prefill, press: Press | None, tokenizer=None, score=None, kvzip_scores=None):
    """A compressed copy of the prefill's cache (the uncompressed copy for ``press=None``); ``tokenizer``
    tokenizes KVzip's reconstruction prompt; ``score`` replaces ``press.score`` (see :func:`compress_layer`);
    ``kvzip_scores``: KVzip's :func:`~tokenreduce.kv.kvzip.reconstruction_scores` of this prefill, computed
    once by a caller pressing it at several keeps (they do not depend on keep)."""
    cache = kvc.clone(pre.cache)
    if press is None:
        return cache
    press.check_model(model)
    if isinstance(press, KVzip):
        return compress_cache(model, cache, pre.ids, None, press, prompt_ids(press, tokenizer), scores=kvzip_scores)
    mods = attention_modules(model)
    valid = torch.ones(1, pre.n, dtype=torch.bool, device=pre.logits.device)
    prefix = None
    for m in mods:
        hidden, cos, sin = pre.inputs[m.layer_idx]
        prefix = compress_layer(press, cache, m, len(mods), hidden, cos, sin, valid, score=score)
    kvc.set_state(cache, kvc.KVState(prefix, pre.n))
    return cache


def kl_rows(p_logits: Tensor, q_logits: Tensor) -> Tensor:
    """KL(P || Q) per position (natural log), from logits (..., V)."""
    lp, lq = torch.log_softmax(p_logits.double(), -1), torch.log_softmax(q_logits.double(), -1)
    return (lp.exp() * (lp - lq)).sum(-1)


@torch.no_grad()
def continuation_logits(model, cache, n: int, cont: Tensor) -> Tensor:
    return Session(model, cache, torch.ones(1, n, dtype=torch.long, device=cont.device)).feed(cont)


def nll(logits: Tensor, targets: Tensor) -> float:
    """Mean negative log-likelihood of ``targets`` (1, T) under ``logits`` (1, T, V)."""
    return float(torch.nn.functional.cross_entropy(logits[0].double(), targets[0]))


@torch.no_grad()
def answer(model, cache, n: int, first_logits: Tensor, question: Tensor | None, tokenizer, new_tokens: int = 8) -> str:
    session = Session(model, cache, torch.ones(1, n, dtype=torch.long, device=first_logits.device))
    logits = session.feed(question, last_only=True) if question is not None else first_logits
    ids = greedy(session, logits, new_tokens, None)
    return tokenizer.decode(ids[0], skip_special_tokens=True)


def quality_rows(model, tokenizer, samples: list[Sample], needles: list[Sample], presses: list[Press], progress=None):
    """Per press: mean KL / ppl on continuations (query-agnostic), passkey accuracy (agnostic and aware;
    aware is not measured for KVzip: query-agnostic by design, and its scoring pass is costly)."""
    acc: dict[tuple[str, float], dict[str, list[float]]] = {}

    def add(press, key, value):
        name, keep = ("full", 1.0) if press is None else (label(press), float(press.keep))
        acc.setdefault((name, keep), {}).setdefault(key, []).append(value)

    everyone = [None, *presses]
    for s in samples:
        pre = capture_prefill(model, s.context)
        full_cache = press_cache(model, pre, None)
        ref = continuation_logits(model, full_cache, pre.n, s.continuation)
        bytes_full = kvc.kv_bytes(pre.cache)
        for p in everyone:
            cache = press_cache(model, pre, p, tokenizer)
            add(p, "kv_ratio", kvc.kv_bytes(cache) / bytes_full)  # before the continuation is appended
            with ragged_attention_for(model, p):
                got = ref if p is None else continuation_logits(model, cache, pre.n, s.continuation)
            add(p, "kl", float(kl_rows(ref, got).mean()))
            add(p, "nll", nll(got[:, :-1], s.continuation[:, 1:]))
        if progress:
            progress.update(1)
    for s in needles:
        pre = capture_prefill(model, s.context)
        aware = capture_prefill(model, torch.cat([s.context, s.question], dim=1))
        for p in everyone:
            with ragged_attention_for(model, p):
                text = answer(model, press_cache(model, pre, p, tokenizer), pre.n, pre.logits, s.question, tokenizer)
                add(p, "passkey_agnostic", float(s.answer in text))
                if isinstance(p, ReconstructionPress):
                    continue  # KVzip is query-agnostic by design; skip its costly second scoring pass
                text = answer(model, press_cache(model, aware, p, tokenizer), aware.n, aware.logits, None, tokenizer)
                add(p, "passkey_aware", float(s.answer in text))
        if progress:
            progress.update(1)
    rows = []
    for (name, keep), d in acc.items():
        row = {"press": name, "keep": keep}
        if "kl" in d:
            row["kl_mean"] = sum(d["kl"]) / len(d["kl"])
            row["ppl"] = math.exp(sum(d["nll"]) / len(d["nll"]))
            row["kv_bytes_ratio"] = sum(d["kv_ratio"]) / len(d["kv_ratio"])
        for k in ("passkey_agnostic", "passkey_aware"):
            if k in d:
                row[k] = sum(d[k]) / len(d[k])
        rows.append(row)
    return rows


def _decoder(model, pre: Prefill, cache, steps: int):
    """A closure decoding ``steps`` greedy tokens from a fresh copy of ``cache`` (timing / memory)."""

    def run():
        session = Session(model, kvc.clone(cache), torch.ones(1, pre.n, dtype=torch.long, device=pre.logits.device))
        greedy(session, pre.logits, steps, None)

    return run


def speed_rows(
    model, ids: Tensor, presses: list[Press], steps: int = 16, repeats: int = 3, tokenizer=None
) -> list[dict]:
    """Per press vs the full cache, same process: KV bytes, decode time per token (interleaved A/B
    medians), peak allocator memory of prefill+compression (hook path) and of decoding."""
    from ..bench.memory import peak_memory
    from ..bench.timing import time_pair

    pre = capture_prefill(model, ids)
    full = press_cache(model, pre, None)
    base_prefill = peak_memory(lambda: generate_ids(model, ids, max_new_tokens=1))["peak_bytes"]
    base_decode = peak_memory(_decoder(model, pre, full, steps))["peak_bytes"]
    rows = []
    for p in presses:
        cache = press_cache(model, pre, p, tokenizer)
        with ragged_attention_for(model, p):
            tb, tp = time_pair(_decoder(model, pre, full, steps), _decoder(model, pre, cache, steps), repeats=repeats)
            dec = peak_memory(_decoder(model, pre, cache, steps))["peak_bytes"]
        def run_prefill(p=p):
            return generate_ids(model, ids, press=p, max_new_tokens=1, tokenizer=tokenizer)

        pf = peak_memory(run_prefill)["peak_bytes"]
        rows.append({
            "press": label(p), "keep": float(p.keep), "tokens": ids.shape[1],
            "kv_bytes_ratio": kvc.kv_bytes(cache) / kvc.kv_bytes(full),
            "decode_ms_per_token_full": 1e3 * tb.median_s / steps, "decode_ms_per_token": 1e3 * tp.median_s / steps,
            "decode_time_ratio": tp.median_s / tb.median_s,
            "decode_peak_ratio": dec / base_decode, "prefill_peak_ratio": pf / base_prefill,
        })
    return rows


def gemfilter_row(model, ids: Tensor, keep: float, layer: int | None = None, repeats: int = 3) -> dict:
    """GemFilter (filter pass + prefill of the kept tokens) vs a full prefill of ``ids``, same process:
    interleaved median wall time and peak allocator memory."""
    from ..bench.memory import peak_memory
    from ..bench.timing import time_pair

    def full():
        Session(model, kvc.new_cache(model), ids[:, :0]).feed(ids, last_only=True)

    def gem():
        kept = gemfilter_ids(model, ids, keep, layer)
        Session(model, kvc.new_cache(model), kept[:, :0]).feed(kept, last_only=True)

    tf, tg = time_pair(full, gem, repeats=repeats)
    mf, mg = peak_memory(full)["peak_bytes"], peak_memory(gem)["peak_bytes"]
    return {"press": "gemfilter", "keep": keep, "tokens": ids.shape[1], "prefill_s_full": tf.median_s,
            "prefill_s": tg.median_s, "prefill_time_ratio": tg.median_s / tf.median_s, "prefill_peak_ratio": mg / mf}


# --- scale: chunked prefill memory/quality, decode time of per-head storage, KVzip's scoring cost ---


@torch.no_grad()
def compressed_prefill(model, ids: Tensor, press: Press | None, chunk_size: int | None = None,
                       tokenizer=None) -> Session:
    """A session holding ``ids`` (B, N) prefilled (in chunks of ``chunk_size``) and compressed by ``press``
    (KVzip: full prefill, then its scoring pass)."""
    session = Session(model, kvc.new_cache(model), ids[:, :0])
    mask = torch.ones_like(ids)
    if press is None:
        prefill(session, ids, mask, None, chunk_size)
    elif isinstance(press, KVzip):
        prefill(session, ids, mask, None, chunk_size)
        compress_cache(model, session.cache, ids, mask, press, prompt_ids(press, tokenizer))
    else:
        with apply_press(model, press, auto=False) as runner:
            prefill(session, ids, mask, runner, chunk_size)
    return session


def chunked_quality_rows(model, samples: list[Sample], presses: list[Press], chunk_size: int) -> list[dict]:
    """Per press: mean KL(full || pressed) over each sample's teacher-forced continuation, compressed once
    after the whole prompt vs after every ``chunk_size`` tokens, and KL(one-shot || chunked)."""
    rows = []
    refs = []
    for s in samples:
        full = compressed_prefill(model, s.context, None)
        refs.append(full.feed(s.continuation))
    for p in presses:
        kl_one, kl_chunk, kl_between = [], [], []
        for s, ref in zip(samples, refs, strict=True):
            got = {}
            for size in (None, chunk_size):
                session = compressed_prefill(model, s.context, p, size)
                with ragged_attention_for(model, p):
                    got[size] = session.feed(s.continuation)
            kl_one.append(float(kl_rows(ref, got[None]).mean()))
            kl_chunk.append(float(kl_rows(ref, got[chunk_size]).mean()))
            kl_between.append(float(kl_rows(got[None], got[chunk_size]).mean()))
        rows.append({"press": label(p), "keep": float(p.keep), "chunk": chunk_size, "kl_one_shot": fmean(kl_one),
                     "kl_chunked": fmean(kl_chunk), "kl_one_shot_vs_chunked": fmean(kl_between)})
    return rows


def chunked_memory_rows(model, ids: Tensor, presses: list[Press], chunk_size: int) -> list[dict]:
    """Peak tensor memory (allocator events) of a prefill of ``ids`` (1, N): full one-shot, chunked without a
    press, and per press one-shot compression and compression after every chunk; ratios to the full
    one-shot prefill (and KV bytes held after it)."""
    from ..bench.memory import peak_memory

    def measure(p, size):
        out = {}

        def run():
            out["cache"] = compressed_prefill(model, ids, p, size).cache

        return peak_memory(run)["peak_bytes"], kvc.kv_bytes(out["cache"])

    full, full_kv = measure(None, None)
    full_chunked, _ = measure(None, chunk_size)
    rows = []
    for p in presses:
        row = {"press": label(p), "keep": float(p.keep), "tokens": ids.shape[1], "chunk": chunk_size,
               "peak_mb_full": full / 2**20, "peak_ratio_full_chunked": full_chunked / full}
        for key, size in (("one_shot", None), ("chunked", chunk_size)):
            peak, held = measure(p, size)
            row[f"peak_mb_{key}"], row[f"peak_ratio_{key}"], row[f"kv_ratio_{key}"] = peak / 2**20, peak / full, \
                held / full_kv
        rows.append(row)
    return rows


def decode_time_rows(model, batch: int, n: int, presses: list[Press], steps: int = 8, repeats: int = 3,
                     window: int = 64, seed: int = 0) -> list[dict]:
    """Decode time per token with a cache of ``n`` random entries per row (batch ``batch``) compressed by each
    press vs the full cache, same process, interleaved medians. Keys/values are random normals and the
    scoring window's hidden states random (the layers' own projections score them), so no prefill runs:
    the figure is the decode step's cost for the cache each press leaves (its layout and size)."""
    from ..bench.timing import time_pair

    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    mods = attention_modules(model)
    hkv, d = cfg.num_key_value_heads, mods[0].head_dim
    dtype = next(model.parameters()).dtype
    full = kvc.new_cache(model)
    for m in mods:
        kv = [torch.randn(batch, hkv, n, d, generator=g).to(dtype) for _ in range(2)]
        full.update(*kv, m.layer_idx)
    hidden = torch.randn(batch, window, cfg.hidden_size, generator=g).to(dtype)
    pos = torch.arange(n - window, n)[None].expand(batch, -1)
    cos, sin = model.model.rotary_emb(hidden, pos)
    valid = torch.ones(batch, n, dtype=torch.bool)
    first = torch.randn(batch, 1, cfg.vocab_size, generator=g)

    def decoder(cache, press):
        def run():
            with ragged_attention_for(model, press):
                session = Session(model, kvc.clone(cache), torch.ones(batch, n, dtype=torch.long))
                greedy(session, first, steps, None)
        return run

    rows = []
    for p in presses:
        cache = kvc.clone(full)
        prefix = None
        with torch.no_grad():
            for m in mods:
                prefix = compress_layer(p, cache, m, len(mods), hidden, cos, sin, valid)
        kvc.set_state(cache, kvc.KVState(prefix, n))
        pad = sum(layer.padding_bytes() for layer in cache.layers if isinstance(layer, RaggedLayer))
        tb, tp = time_pair(decoder(full, None), decoder(cache, p), repeats=repeats)
        rows.append({"press": label(p), "keep": float(p.keep), "batch": batch, "tokens": n, "steps": steps,
                     "kv_bytes_ratio": kvc.kv_bytes(cache) / kvc.kv_bytes(full),
                     "padding_ratio": pad / kvc.kv_bytes(full),
                     "decode_ms_per_token_full": 1e3 * tb.median_s / steps,
                     "decode_ms_per_token": 1e3 * tp.median_s / steps, "decode_time_ratio": tp.median_s / tb.median_s})
    return rows


def kvzip_cost_row(model, ids: Tensor, press: KVzip, tokenizer=None, repeats: int = 3) -> dict:
    """KVzip's scoring pass vs a plain prefill of ``ids`` (1, N), same process: interleaved median times of
    the prefill and of the scoring pass (on a prefilled cache), and peak tensor memory of a plain prefill vs
    prefill + scoring + compression (the whole KVzip path)."""
    from ..bench.memory import peak_memory
    from ..bench.timing import time_pair

    mask = torch.ones_like(ids)
    prompt = prompt_ids(press, tokenizer)
    cache = compressed_prefill(model, ids, None).cache

    def plain():
        compressed_prefill(model, ids, None)

    def scoring():
        reconstruction_scores(model, cache, ids, mask, prompt, press.chunk, press.window)

    tp, ts = time_pair(plain, scoring, repeats=repeats)
    mp = peak_memory(plain)["peak_bytes"]
    mk = peak_memory(lambda: compressed_prefill(model, ids, press, tokenizer=tokenizer))["peak_bytes"]
    return {"press": label(press), "keep": float(press.keep), "tokens": ids.shape[1], "prefill_s": tp.median_s,
            "scoring_s": ts.median_s, "scoring_time_ratio": ts.median_s / tp.median_s,
            "prefill_plus_scoring_ratio": (tp.median_s + ts.median_s) / tp.median_s,
            "peak_mb_prefill": mp / 2**20, "peak_mb_kvzip": mk / 2**20, "peak_ratio": mk / mp}
