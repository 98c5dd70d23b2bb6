"""Run the RULER-style suite through KV presses: one prefill per sample, every press on a copy of it.

Each sample's context is prefilled once with the full cache (:func:`tokenreduce.kv.bench.capture_prefill`);
each press compresses a copy of that cache with the hooks' own code path, then the question is fed and a
short answer decoded greedily (query-agnostic: the question comes after compression, so one compressed
cache could serve any question). ``query_aware=True`` compresses ``context + question`` instead, so the
question lies in window scorers' observation window. The full cache is the reference row.

Cost, same results: KVzip's reconstruction scores (a pass ~2.6x a prefill) are computed once per sample and
press configuration and reused for every keep; the answers of presses whose compressed caches have the same
shape (same entries per layer, plain storage) are decoded as one batch (``batch=True``), each row stopping at
its own EOS, the same tokens as decoding them one by one (tested).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Container, Sequence
from dataclasses import fields
from pathlib import Path

import torch
from transformers.cache_utils import DynamicLayer

from ..core.provenance import Provenance
from ..kv import cache as kvc
from ..kv.bench import Prefill, capture_prefill, press_cache
from ..kv.kvzip import prompt_ids, reconstruction_scores
from ..kv.presses import KVzip, Press, ReconstructionPress, label
from ..kv.ragged import ragged_attention_for
from ..kv.session import Session
from .ruler import TASKS, RulerSample

# answer tokens per task (RULER decodes more; these cover the expected strings with a little slack)
NEW_TOKENS = {"niah_single": 16, "niah_multikey": 16, "niah_multivalue": 48, "niah_multiquery": 32,
              "vt": 32, "cwe": 64, "qa": 24}


def _ids(tokenizer, text: str, special: bool) -> torch.Tensor:
    return torch.tensor([tokenizer.encode(text, add_special_tokens=special)], dtype=torch.long)


@torch.no_grad()
def _answer(model, cache, n: int, logits, question, tokenizer, new_tokens: int) -> tuple[str, int]:
    """Greedy answer from ``cache`` holding ``n`` prompt tokens (``question`` fed first unless None), and the
    tokens decoded (up to ``new_tokens``: fewer when the model ends with EOS)."""
    return _answers(model, cache, 1, n, logits, question, tokenizer, new_tokens)[0]


@torch.no_grad()
def _answers(model, cache, rows: int, n: int, logits, question, tokenizer, new_tokens: int) -> list[tuple[str, int]]:
    """:func:`_answer` for a cache of ``rows`` rows (one compressed cache per row, same question): a row that
    emits EOS leaves the batch (the others decode on without it); a row's answer ends at its first EOS."""
    session = Session(model, cache, torch.ones(rows, n, dtype=torch.long, device=logits.device))
    if question is not None:
        logits = session.feed(question.expand(rows, -1), last_only=True)
    else:
        logits = logits.expand(rows, -1, -1)
    eos = getattr(tokenizer, "eos_token_id", None)
    out: list[list[int]] = [[] for _ in range(rows)]
    live = list(range(rows))  # rows still decoding, in batch order
    last = logits[:, -1]
    for t in range(new_tokens):
        nxt = last.argmax(-1)
        for r, tok in zip(live, nxt.tolist(), strict=True):
            out[r].append(tok)
        going = nxt != eos if eos is not None else torch.ones_like(nxt, dtype=torch.bool)
        if not bool(going.any()) or t + 1 == new_tokens:
            break
        if not bool(going.all()):
            live = [r for r, g in zip(live, going.tolist(), strict=True) if g]
            _keep_rows(session, going.nonzero()[:, 0])
            nxt = nxt[going]
        last = session.feed(nxt[:, None])[:, -1]
    return [(tokenizer.decode(ids[:-1] if ids[-1] == eos else ids, skip_special_tokens=True), len(ids)) for ids in out]


def _keep_rows(session: Session, rows: torch.Tensor) -> None:
    """Drop the other rows of a stacked cache (:func:`stack_caches`) and of the session's mask."""
    cache = session.cache
    for i in range(kvc.n_layers(cache)):
        keys, values = kvc.layer_kv(cache, i)
        kvc.set_layer_kv(cache, i, keys[rows], values[rows])
    state = kvc.get_state(cache)
    kvc.set_state(cache, Provenance(state.index[rows], state.real[rows], state.seen))
    session.mask = session.mask[rows]


def batch_key(press: Press | None, cache) -> tuple | None:
    """Caches with equal keys can be decoded as one batch: compressed (a provenance map), plain per-layer
    storage, the same entries per layer; None for the full cache, ragged/custom storage or state on a press."""
    state = kvc.get_state(cache)
    if press is None or press.ragged or state is None or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    return (state.seen, *(tuple(layer.keys.shape[1:]) for layer in cache.layers))


def stack_caches(caches: Sequence) -> object:
    """One cache whose rows are ``caches`` (single-row, equal :func:`batch_key`), provenance maps stacked."""
    out = kvc.clone(caches[0])
    for i in range(kvc.n_layers(out)):
        kvc.set_layer_kv(out, i, torch.cat([kvc.layer_kv(c, i)[0] for c in caches]),
                         torch.cat([kvc.layer_kv(c, i)[1] for c in caches]))
    states = [kvc.get_state(c) for c in caches]
    kvc.set_state(out, Provenance(torch.cat([s.index for s in states]), torch.cat([s.real for s in states]),
                                  states[0].seen))
    return out


def _config(press: Press) -> tuple:
    """A press's parameters except ``keep`` (its own and those of presses it wraps, e.g. AdaKV's scorer)."""
    return (type(press), *((f.name, _config(v) if isinstance(v := getattr(press, f.name), Press) else repr(v))
                           for f in fields(press) if f.name != "keep"))


def _pressed(model, pre: Prefill, press: Press | None, tokenizer, memo: dict):
    """``press_cache``, each layer's scores (KVzip: its reconstruction scores) taken from ``memo`` when the same
    press at another keep computed them on this prefill (scores do not depend on keep: tested per press)."""
    if press is None:
        return press_cache(model, pre, press, tokenizer)
    config = _config(press)
    if not isinstance(press, KVzip):
        def score(view, scorer=press.score):
            if (config, view.layer) not in memo:
                memo[(config, view.layer)] = scorer(view)
            return memo[(config, view.layer)]

        return press_cache(model, pre, press, tokenizer, score=score)
    if config not in memo:  # the scoring pass leaves the prefill's cache untouched
        press.check_model(model)
        memo[config] = reconstruction_scores(model, pre.cache, pre.ids, torch.ones_like(pre.ids),
                                             prompt_ids(press, tokenizer), press.chunk, press.window)
    return press_cache(model, pre, press, tokenizer, kvzip_scores=memo[config])


@torch.no_grad()
def run_suite(model, tokenizer, samples: Sequence[RulerSample], presses: Sequence[Press], *,
              query_aware: bool = False, new_tokens: dict[str, int] | None = None, progress=None,
              on_sample: Callable[[list[dict]], None] | None = None, batch: bool = True,
              both_modes: bool = False, skip: Container[int] = ()) -> list[dict]:
    """One record per (sample, press): task, press label, keep, mode, prediction, score, the tokens decoded
    and the seconds compressing (``press_s``) + answering (``answer_s``; a batch's time split evenly over its
    rows) took, ``seconds`` their sum (an answer that never reaches EOS decodes the task's whole budget,
    which is what makes a sample slow). The full cache is the record with ``press="full"``, ``keep=1.0``.
    KVzip (query-agnostic by design) is skipped in query-aware mode. ``on_sample`` receives each sample's
    records as soon as they exist (partial runs). ``batch``: decode equal-shape caches as one batch.
    ``both_modes``: each sample query-agnostic, then query-aware (a run cut short has both on the same samples).
    ``skip``: indices of samples not run (a resumed run's finished ones)."""
    records = []
    for i, s in enumerate(samples):
        if i in skip:
            continue
        mine = []
        for aware in (False, True) if both_modes else (query_aware,):
            mine += _sample_records(model, tokenizer, i, s, presses, aware, NEW_TOKENS | (new_tokens or {}), batch)
        records.extend(mine)
        if on_sample is not None:
            on_sample(mine)
        if progress is not None:
            progress.update(1)
    return records


def _sample_records(model, tokenizer, i: int, s: RulerSample, presses: Sequence[Press], query_aware: bool,
                    budget: dict[str, int], batch: bool) -> list[dict]:
    """:func:`run_suite`'s records of sample ``i`` in one mode, in the order of ``presses`` (full cache first)."""
    mode = "aware" if query_aware else "agnostic"
    ctx = _ids(tokenizer, s.context, True)
    q = _ids(tokenizer, s.question, False)
    pre = capture_prefill(model, torch.cat([ctx, q], 1) if query_aware else ctx)
    question = None if query_aware else q
    memo: dict = {}
    mine = []
    for keep in dict.fromkeys([None, *(p.keep for p in presses)]):  # one keep's caches held at a time
        groups: dict[object, list[tuple[Press | None, object, float]]] = {}
        for j, p in enumerate([None, *presses]):
            if (p.keep if p is not None else None) != keep or (query_aware and isinstance(p, ReconstructionPress)):
                continue
            start = time.perf_counter()
            with ragged_attention_for(model, p):
                cache = _pressed(model, pre, p, tokenizer, memo)
            key = batch_key(p, cache) if batch else None
            groups.setdefault(("solo", j) if key is None else key, []).append((p, cache, time.perf_counter() - start))
        mine += _decode_groups(model, tokenizer, i, s, mode, pre, question, budget[s.task], groups.values())
    order = {("full" if p is None else label(p), 1.0 if p is None else float(p.keep)): j
             for j, p in enumerate([None, *presses])}
    mine.sort(key=lambda r: order[(r["press"], r["keep"])])
    return mine


def _decode_groups(model, tokenizer, i: int, s: RulerSample, mode: str, pre: Prefill, question, new_tokens: int,
                   groups) -> list[dict]:
    """Records of each group of (press, cache, press seconds), every group's answers decoded as one batch."""
    mine = []
    for members in groups:
        start = time.perf_counter()
        with ragged_attention_for(model, members[0][0]):
            cache = members[0][1] if len(members) == 1 else stack_caches([c for _, c, _ in members])
            answers = _answers(model, cache, len(members), pre.n, pre.logits, question, tokenizer, new_tokens)
        share = (time.perf_counter() - start) / len(members)
        for (p, _, press_s), (text, decoded) in zip(members, answers, strict=True):
            mine.append({"sample": i, "task": s.task, "press": "full" if p is None else label(p),
                         "keep": 1.0 if p is None else float(p.keep), "mode": mode, "prediction": text,
                         "answers": list(s.answers), "score": s.score(text), "decoded": decoded,
                         "press_s": round(press_s, 3), "answer_s": round(share, 3),
                         "seconds": round(press_s + share, 3), "batch": len(members)})
    return mine


def aggregate(records: Sequence[dict]) -> list[dict]:
    """Rows per (press, keep, mode): mean score ×100 per task, their average, and that average as a share
    of the full cache's (same mode); the full cache first."""
    groups: dict[tuple, dict[str, list[float]]] = {}
    for r in records:
        groups.setdefault((r["press"], r["keep"], r["mode"]), {}).setdefault(r["task"], []).append(r["score"])
    full_avg: dict[str, float] = {}
    rows = []
    for (press, keep, mode), per in groups.items():
        row = {"press": press, "keep": keep, "mode": mode}
        for t in TASKS:
            if t in per:
                row[t] = 100.0 * sum(per[t]) / len(per[t])
        row["avg"] = sum(row[t] for t in per) / len(per)
        row["samples"] = sum(len(v) for v in per.values())
        if press == "full":
            full_avg[mode] = row["avg"]
        rows.append(row)
    for row in rows:
        base = full_avg.get(row["mode"])
        row["vs_full"] = row["avg"] / base if base else None
    rows.sort(key=lambda r: (r["mode"], r["press"] != "full", r["press"], -r["keep"]))
    return rows


def columns(rows: Sequence[dict]) -> list[str]:
    """Table columns: identity, the tasks present, the averages."""
    tasks = [t for t in TASKS if any(t in r for r in rows)]
    return ["press", "keep", "mode", *tasks, "avg", "vs_full"]


def plot(rows: Sequence[dict], path: str | Path, title: str = "RULER-style suite") -> Path:
    """PNG, one panel per mode (as kvpress's leaderboard): average score vs keep, one line per press, the full
    cache as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    modes = sorted({r["mode"] for r in rows})
    fig, axes = plt.subplots(1, len(modes), figsize=(6.5 * len(modes), 4.8), sharey=True, squeeze=False)
    presses = sorted({r["press"] for r in rows} - {"full"})
    colors = {p: plt.get_cmap("tab20")(i % 20) for i, p in enumerate(presses)}
    for ax, mode in zip(axes[0], modes, strict=True):
        mine = [r for r in rows if r["mode"] == mode]
        for r in mine:
            if r["press"] == "full":
                ax.axhline(r["avg"], ls="--", color="black", lw=1, label="full cache")
        for press in presses:
            pts = sorted((r["keep"], r["avg"]) for r in mine if r["press"] == press)
            if pts:
                ax.plot([k for k, _ in pts], [a for _, a in pts], marker="o", color=colors[press], label=press)
        ax.set_xscale("log")
        ax.set_xticks(sorted({r["keep"] for r in mine}), [f"{k:g}" for k in sorted({r["keep"] for r in mine})])
        ax.set_xlabel("keep (fraction of KV entries kept)")
        ax.set_title(f"query-{mode}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    axes[0][0].set_ylabel("average score (0-100)")
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
