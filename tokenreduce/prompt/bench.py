"""Prompt-compression measurements: answer retention, rate adherence, speed.

Retention needs no answering LLM: an example counts as retained at a rate when a gold answer (SQuAD-
normalized) still appears in the compressed context. Only examples whose full context contains an
answer are scored. For HotpotQA, ``support`` is the share where every supporting-fact sentence survives
whole, and ``gold_docs`` the share where both gold paragraphs keep at least their title line.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence

from .bench_data import QAExample, contains
from .compress import PromptCompressor


def retention(
    examples: Sequence[QAExample],
    compressor: PromptCompressor,
    rates: Sequence[float],
    on_example: Callable[[], None] | None = None,
) -> dict[float, dict[str, float]]:
    """``{rate: {"answer": share, "support": share, "gold_docs": share, "ratio": mean achieved ratio, "whole": mean
    share of the sentences with anything kept that are kept entirely, ...}}``."""
    acc: dict[float, dict[str, list[float]]] = {
        r: {"answer": [], "support": [], "gold_docs": [], "ratio": [], "whole": []} for r in rates
    }
    for ex in examples:
        full = "\n\n".join(ex.documents)
        answerable = any(contains(full, a) for a in ex.answers) and ex.answers[0].lower() not in ("yes", "no")
        prep = compressor.prepare(ex.documents, ex.question)
        for r in rates:
            res = compressor.fit(prep, rate=r)
            a = acc[r]
            a["ratio"].append(res.ratio)
            kept, whole = res.kept_sentences()
            a["whole"].append(whole / max(kept, 1))
            if answerable:
                a["answer"].append(float(any(contains(res.text, ans) for ans in ex.answers)))
            if ex.support:
                a["support"].append(float(all(s in res.text for s in ex.support)))
                a["gold_docs"].append(float(all(ex.documents[g].split("\n", 1)[0] in res.text for g in ex.gold_docs)))
        if on_example:
            on_example()
    out = {}
    for r, a in acc.items():
        out[r] = {k: (statistics.fmean(v) if v else None) for k, v in a.items()}
        out[r]["n_answerable"] = len(a["answer"])
        out[r]["n"] = len(a["ratio"])
    return out


def adherence(
    texts: Sequence[str],
    compressor: PromptCompressor,
    rates: Sequence[float],
    questions: Sequence[str | None] | None = None,
    on_example: Callable[[], None] | None = None,
) -> list[dict[str, float]]:
    """One row per (text, rate): original / target / achieved tokens and whether |achieved - target| is
    within max(2 tokens, 1 % of target)."""
    rows = []
    for i, t in enumerate(texts):
        prep = compressor.prepare(t, questions[i] if questions else None)
        for r in rates:
            res = compressor.fit(prep, rate=r)
            err = res.target_tokens - res.compressed_tokens
            rows.append(
                {
                    "text": i,
                    "rate": r,
                    "original": res.original_tokens,
                    "target": res.target_tokens,
                    "achieved": res.compressed_tokens,
                    "within": float(0 <= err <= max(2, 0.01 * res.target_tokens)),
                    "rel_err": err / res.target_tokens,
                }
            )
        if on_example:
            on_example()
    return rows


def speed(compressor: PromptCompressor, text: str, question: str | None, rate: float, repeats: int = 5) -> dict:
    """Median / min / max wall seconds of the whole call (segmentation, scoring, budget) after one warm-up,
    plus the median CPU seconds of this process (all threads) and the share spent in ``prepare`` (scoring).

    On a shared machine wall time includes waiting for the CPU; CPU seconds do not."""
    compressor(text, question, rate=rate)
    times, cpu, prep_share = [], [], []
    for _ in range(repeats):
        t, c = time.perf_counter(), time.process_time()
        prep = compressor.prepare(text, question)
        t_prep = time.perf_counter() - t
        compressor.fit(prep, rate=rate)
        times.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        prep_share.append(t_prep / times[-1])
    return {
        "median_s": statistics.median(times),
        "min_s": min(times),
        "max_s": max(times),
        "cpu_s": statistics.median(cpu),
        "scoring_share": statistics.median(prep_share),
        "runs": repeats,
    }


class MemoEncoder:
    """Wraps a text encoder and remembers embeddings by text for one benchmark run, so variants of a
    method that differ only in score weights embed each sentence once. Owned by the caller, not global."""

    def __init__(self, encoder) -> None:
        self.encoder, self.tokenizer, self.memo = encoder, encoder.tokenizer, {}

    def embed(self, texts: list[str], batch_size: int = 32):
        import torch

        todo = list(dict.fromkeys(t for t in texts if t not in self.memo))
        if todo:
            for t, e in zip(todo, self.encoder.embed(todo, batch_size=batch_size)):
                self.memo[t] = e
        return torch.stack([self.memo[t] for t in texts])

    def clear(self) -> None:
        self.memo.clear()
