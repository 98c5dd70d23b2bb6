"""Run the RULER-style suite through KV presses: one prefill per sample, every press on a copy of it.

Each sample's context is prefilled once with the full cache (:func:`tokenreduce.kv.bench.capture_prefill`);
each press compresses a copy of that cache with the hooks' own code path, then the question is fed and a
short answer decoded greedily (query-agnostic: the question comes after compression, so one compressed
cache could serve any question). ``query_aware=True`` compresses ``context + question`` instead, so the
question lies in window scorers' observation window. The full cache is the reference row.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from ..kv.bench import capture_prefill, press_cache
from ..kv.presses import Press, ReconstructionPress, label
from ..kv.ragged import ragged_attention_for
from ..kv.session import Session, greedy
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
    session = Session(model, cache, torch.ones(1, n, dtype=torch.long, device=logits.device))
    if question is not None:
        logits = session.feed(question, last_only=True)
    ids = greedy(session, logits, new_tokens, getattr(tokenizer, "eos_token_id", None))[0].tolist()
    decoded = len(ids)
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos in ids:
        ids = ids[: ids.index(eos)]
    return tokenizer.decode(ids, skip_special_tokens=True), decoded


@torch.no_grad()
def run_suite(model, tokenizer, samples: Sequence[RulerSample], presses: Sequence[Press], *,
              query_aware: bool = False, new_tokens: dict[str, int] | None = None, progress=None,
              on_sample: Callable[[list[dict]], None] | None = None) -> list[dict]:
    """One record per (sample, press): task, press label, keep, mode, prediction, score, the tokens decoded
    and the seconds compressing + answering took (``decoded``/``seconds``: an answer that never reaches EOS
    decodes the task's whole budget, which is what makes a sample slow). The full cache is the record with
    ``press="full"``, ``keep=1.0``. KVzip (query-agnostic by design) is skipped in
    query-aware mode. ``on_sample`` receives each sample's records as soon as they exist (partial runs)."""
    budget = {**NEW_TOKENS, **(new_tokens or {})}
    mode = "aware" if query_aware else "agnostic"
    records = []
    for i, s in enumerate(samples):
        ctx = _ids(tokenizer, s.context, True)
        q = _ids(tokenizer, s.question, False)
        pre = capture_prefill(model, torch.cat([ctx, q], 1) if query_aware else ctx)
        question = None if query_aware else q
        for p in [None, *presses]:
            if query_aware and isinstance(p, ReconstructionPress):
                continue
            start = time.perf_counter()
            with ragged_attention_for(model, p):
                cache = press_cache(model, pre, p, tokenizer)
                text, decoded = _answer(model, cache, pre.n, pre.logits, question, tokenizer, budget[s.task])
            records.append({"sample": i, "task": s.task, "press": "full" if p is None else label(p),
                            "keep": 1.0 if p is None else float(p.keep), "mode": mode, "prediction": text,
                            "answers": list(s.answers), "score": s.score(text), "decoded": decoded,
                            "seconds": round(time.perf_counter() - start, 3)})
        if on_sample is not None:
            on_sample([r for r in records if r["sample"] == i])
        if progress is not None:
            progress.update(1)
    return records


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
    """PNG: average score vs keep, one line per press (per mode), the full cache as a dashed line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for mode in sorted({r["mode"] for r in rows}):
        mine = [r for r in rows if r["mode"] == mode]
        for r in mine:
            if r["press"] == "full":
                ax.axhline(r["avg"], ls="--", color="black", lw=1, label=f"full cache ({mode})")
        for press in sorted({r["press"] for r in mine} - {"full"}):
            pts = sorted((r["keep"], r["avg"]) for r in mine if r["press"] == press)
            ax.plot([k for k, _ in pts], [a for _, a in pts], marker="o", label=f"{press} ({mode})")
    ax.set_xscale("log")
    ax.set_xlabel("keep (fraction of KV entries kept)")
    ax.set_ylabel("average score (0-100)")
    ax.set_title(title)
    ax.legend(fontsize=7, loc="best")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
