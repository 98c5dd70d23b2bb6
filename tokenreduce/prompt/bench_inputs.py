"""Real inputs for rate adherence and speed: short NQ passages (< 150 tokens) and long (> 10k tokens)
L-Eval meeting transcripts and Paul Graham essay concatenations, all from ``../shared/data``."""

from __future__ import annotations

import gzip
import json
import statistics
import sys
from pathlib import Path

from ..bench.report import format_table
from ..bench.tasks import NQ_RELPATH
from .bench_setup import make_compressor, require_data

PG_DIR = Path("needle_haystack_paul_graham", "PaulGrahamEssays")
MEETINGS = Path("leval", "Open-ended-tasks", "meeting_summ.jsonl")


def short_inputs(data: Path, count, n: int = 80) -> list[tuple[str, str]]:
    """(passage, question) for the first ``n`` NQ gold passages under 150 tokens."""
    out = []
    with gzip.open(data / NQ_RELPATH, "rt", encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            g = next(c for c in r["ctxs"] if c.get("isgold"))
            text = f"{g['title']}\n{g['text']}"
            if count(text) < 150:
                out.append((text, r["question"]))
            if len(out) >= n:
                break
    return out


def essays_text(data: Path) -> str:
    return "\n\n".join(p.read_text(encoding="utf-8") for p in sorted((data / PG_DIR).glob("*.txt")))


def cut_to_tokens(text: str, count, tokens: int) -> str:
    """The shortest prefix of ``text`` ending at a line break with at least ``tokens`` tokens."""
    lo, hi = 0, len(text)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count(text[:mid]) >= tokens:
            hi = mid
        else:
            lo = mid
    nl = text.find("\n", hi)
    return text[: nl if nl > 0 else len(text)]


def long_inputs(data: Path, count, min_tokens: int = 10_000, n_essay_chunks: int = 8) -> list[tuple[str, str | None]]:
    """L-Eval meetings over ``min_tokens`` (with their first question) and essay chunks of ``min_tokens``+."""
    out: list[tuple[str, str | None]] = []
    with open(data / MEETINGS, encoding="utf-8") as fh:
        for line in fh:
            r = json.loads(line)
            if count(r["input"]) > min_tokens:
                out.append((r["input"], r["instructions"][0]))
    rest = essays_text(data)
    for _ in range(n_essay_chunks):
        chunk = cut_to_tokens(rest, count, min_tokens + 200)
        if count(chunk) <= min_tokens:
            break
        out.append((chunk, None))
        rest = rest[len(chunk) :]
    return out


def run_adherence(a) -> dict:
    from tqdm import tqdm

    from .bench import adherence

    data = require_data(a.data_dir)
    rows = []
    for name in a.methods:
        comp = make_compressor(name, a.tokenizer, a.data_dir)
        for kind, inputs in (
            ("short", short_inputs(data, comp.counter.count)),
            ("long", long_inputs(data, comp.counter.count)),
        ):
            bar = tqdm(total=len(inputs), desc=f"{name} {kind}", disable=a.no_progress, file=sys.stderr)
            rs = adherence([t for t, _ in inputs], comp, a.rates, [q for _, q in inputs], on_example=bar.update)
            bar.close()
            rows += [dict(r, method=name, kind=kind) for r in rs]
    summary = []
    for name in a.methods:
        for kind in ("short", "long"):
            for rate in a.rates:
                sel = [r for r in rows if r["method"] == name and r["kind"] == kind and r["rate"] == rate]
                if sel:
                    summary.append(
                        {
                            "method": name,
                            "kind": kind,
                            "rate": rate,
                            "inputs": len(sel),
                            "median_original": statistics.median(r["original"] for r in sel),
                            "within_1pct_or_2tok": statistics.fmean(r["within"] for r in sel),
                            "max_under_tokens": max(r["target"] - r["achieved"] for r in sel),
                            "over_target": sum(r["achieved"] > r["target"] for r in sel),
                        }
                    )
    print(format_table(summary, list(summary[0])))
    return {"rows": summary + [dict(r, table="per_input") for r in rows]}


def run_speed(a) -> dict:
    import torch

    from .bench import speed

    data = require_data(a.data_dir)
    rows = []
    question = "What makes a startup succeed?"
    for name in a.methods:
        comp = make_compressor(name, a.tokenizer, a.data_dir)
        text = cut_to_tokens(essays_text(data), comp.counter.count, a.tokens)
        for rate in a.rates:
            t = speed(comp, text, question, rate, repeats=a.repeats)
            rows.append(
                {
                    "method": name,
                    "context_tokens": comp.counter.count(text),
                    "rate": rate,
                    "threads": torch.get_num_threads(),
                    **t,
                }
            )
            print(f"[done] {name} rate {rate}: {t['median_s']:.3f} s", file=sys.stderr, flush=True)
    print(
        format_table(
            rows,
            [
                "method",
                "context_tokens",
                "rate",
                "threads",
                "median_s",
                "min_s",
                "max_s",
                "cpu_s",
                "scoring_share",
                "runs",
            ],
        )
    )
    return {"rows": rows}
