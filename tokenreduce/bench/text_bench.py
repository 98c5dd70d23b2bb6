"""The encoder benchmark: methods × budgets → cost and quality, against the unreduced model.

Everything is measured in one process: the unreduced model's timings are interleaved with each
method's, quality is compared with the same model unreduced, FLOPs are counted analytically at
each layer's real token count (MACs; FLOPs = 2 × MACs). Retrieval tasks reduce the passages
(index-time cost, what token reduction saves) and keep queries unreduced.
"""

from __future__ import annotations

import random
import statistics
from collections.abc import Callable, Sequence
from typing import Any

import torch
from tqdm.auto import tqdm

from ..encoder.adapters import patch, unpatch
from ..encoder.adapters.patching import resolve_family
from ..encoder.cost import encoder_cost, total_macs
from ..encoder.methods import make_method
from .encoder import TextEncoder
from .memory import peak_memory
from .metrics import cosine_fidelity, retrieval_metrics, sts_spearman
from .report import machine_info, pareto_front
from .run_config import RunConfig
from .tasks import RetrievalTask, STSTask
from .timing import time_pair

DEFAULT_KEEPS = (0.9, 0.7, 0.5, 0.3)


def grid(
    methods: Sequence[str], keeps: Sequence[float], schedule: str = "constant", extra: dict[str, Any] | None = None
) -> list[RunConfig]:
    """Every method at every keep rate (validated now, before any compute)."""
    out = []
    for m in methods:
        for k in keeps:
            params = {"keep": float(k), "schedule": schedule, **(extra or {})}
            make_method(m, **params)
            out.append(RunConfig(m, params))
    return out


# The README's setting for short texts (BENCHMARKS.md: ≈ 1.5x at < 1 % MRR loss on all-MiniLM-L6-v2 / NQ)
README_TOME = {"keep": 0.4, "schedule": "decreasing", "metric": "hidden", "min_tokens": 16}
# every other method at the same budget recipe: one point per method, where methods differ most
RECIPE = {"keep": 0.5, "schedule": "decreasing", "min_tokens": 16}


def representative_grid(methods: Sequence[str]) -> list[RunConfig]:
    """One setting per method (the README's recipe at keep 0.5), plus ToMe at the README's own setting.

    The main job's default: it covers every method in a few minutes, where the full grid
    (:func:`grid` over :data:`DEFAULT_KEEPS`) takes several times longer.
    """
    out = [RunConfig("tome", dict(README_TOME))] if "tome" in methods else []
    for m in methods:
        make_method(m, **RECIPE)
        out.append(RunConfig(m, dict(RECIPE)))
    return out


def _texts(task: RetrievalTask | STSTask) -> list[str]:
    return list(task.passages) if isinstance(task, RetrievalTask) else list(task.sentences1)


def _reduced_texts(task: RetrievalTask | STSTask) -> list[str]:
    """Every text the task encodes with reduction (STS: both sides; retrieval: the passages)."""
    return _texts(task) + (list(task.sentences2) if isinstance(task, STSTask) else [])


def _quality(
    enc: TextEncoder, task: RetrievalTask | STSTask, qemb: dict[str, torch.Tensor], batch_size: int, bar: tqdm | None
) -> tuple[dict[str, float], torch.Tensor]:
    """Task metrics with the encoder as currently patched; returns (metrics, reduced embeddings)."""
    if isinstance(task, RetrievalTask):
        p = enc.embed(task.passages, batch_size, bar)
        return retrieval_metrics(qemb[task.name], p, task.gold), p
    e1 = enc.embed(task.sentences1, batch_size, bar)
    e2 = enc.embed(task.sentences2, batch_size, bar)
    return {"spearman": sts_spearman(e1, e2, task.scores)}, torch.cat([e1, e2])


def run_text_bench(
    enc: TextEncoder,
    tasks: Sequence[RetrievalTask | STSTask],
    configs: Sequence[RunConfig],
    batch_size: int = 32,
    timing_batches: int = 2,
    repeats: int = 5,
    seed: int = 0,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run the baseline and every config; returns ``{"meta": ..., "rows": [...]}``.

    Speed is measured on ``timing_batches`` batches of ``batch_size`` texts sampled from the first
    task (length-sorted within the sample, like the baseline), interleaved with the baseline,
    median of ``repeats`` runs. Quality is computed on every task's full data.
    """
    if not tasks:
        raise ValueError("need at least one task")
    fam, _ = resolve_family(enc.model)
    dims = fam.dims(enc.model)
    protected = fam.default_protected(enc.model)
    primary = _texts(tasks[0])
    rng = random.Random(seed)
    sample = rng.sample(primary, min(len(primary), batch_size * timing_batches))
    tbatches = [b for _, b in enc.batches(sample, batch_size)]
    lengths = {
        t.name: [b["attention_mask"].sum(1) for _, b in enc.batches(_reduced_texts(t), batch_size)] for t in tasks
    }

    def run_timing() -> None:
        for b in tbatches:
            enc.embed_batch(b)

    def macs(method: Any, task: str = tasks[0].name) -> int:
        return sum(total_macs(encoder_cost(dims, ln, method, protected)) for ln in lengths[task])

    total_texts = sum(len(_reduced_texts(t)) for t in tasks)
    n_timed = sum(int(b["input_ids"].shape[0]) for b in tbatches)
    per_config = total_texts + 2 * (repeats + 1) * n_timed  # quality, then interleaved timing (+1 warm-up each)
    bar = tqdm(total=total_texts + per_config * len(configs), desc="bench", disable=not progress, unit="text",
               dynamic_ncols=True)

    def timed(fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            fn()
            bar.update(n_timed)
        return run
    qemb = {t.name: enc.embed(t.queries, batch_size) for t in tasks if isinstance(t, RetrievalTask)}
    base_quality, base_emb = {}, {}
    for t in tasks:
        base_quality[t.name], base_emb[t.name] = _quality(enc, t, qemb, batch_size, bar)
    base_task_macs = {t.name: macs(None, t.name) for t in tasks}
    base_macs = base_task_macs[tasks[0].name]
    base_mem = peak_memory(lambda: enc.embed_batch(tbatches[-1]))["peak_bytes"]

    rows: list[dict[str, Any]] = []
    base_row: dict[str, Any] = {
        "method": "none",
        "config": "none",
        "keep": 1.0,
        "flops_ratio": 1.0,
        "gmacs_per_text": base_macs / len(primary) / 1e9,
        "speedup": 1.0,
    }
    for t in tasks:
        for k, v in base_quality[t.name].items():
            base_row[f"{t.name}:{k}"] = v
    for cfg in configs:
        bar.set_postfix_str(cfg.label, refresh=False)
        m = make_method(cfg.method, **cfg.params)
        patch(enc.model, m)
        try:
            row: dict[str, Any] = {
                "method": cfg.method,
                "config": cfg.label,
                "keep": cfg.params.get("keep"),
                "params": cfg.params,
            }
            for t in tasks:
                q, emb = _quality(enc, t, qemb, batch_size, bar)
                for k, v in q.items():
                    row[f"{t.name}:{k}"] = v
                    row[f"{t.name}:{k}:rel_change"] = (v - base_quality[t.name][k]) / abs(base_quality[t.name][k])
                row[f"{t.name}:fidelity_cos"] = cosine_fidelity(emb, base_emb[t.name])["mean"]
            red_mem = peak_memory(lambda: enc.embed_batch(tbatches[-1]))["peak_bytes"]
        finally:
            unpatch(enc.model)

        def run_reduced(m=m) -> None:
            patch(enc.model, m)
            try:
                run_timing()
            finally:
                unpatch(enc.model)

        tb, tr = time_pair(timed(run_timing), timed(run_reduced), repeats=repeats)
        mac = macs(m)
        for t in tasks[1:]:  # how much each other task was actually reduced
            row[f"{t.name}:flops_ratio"] = macs(m, t.name) / base_task_macs[t.name]
        row.update(
            {
                "flops_ratio": mac / base_macs,
                "gmacs_per_text": mac / len(primary) / 1e9,
                "speedup": tb.median_s / tr.median_s,
                "time_s": tr.median_s,
                "base_time_s": tb.median_s,
                "time_min_s": tr.min_s,
                "time_max_s": tr.max_s,
                "throughput": n_timed / tr.median_s,
                "base_throughput": n_timed / tb.median_s,
                "mem_ratio": red_mem / base_mem if base_mem > 0 else None,
            }
        )
        rows.append(row)
        if on_row is not None:
            on_row(row)
    bar.close()
    if rows:  # the baseline's throughput: median over its interleaved timings
        base_row["throughput"] = statistics.median(r["base_throughput"] for r in rows)
    all_rows = [base_row, *rows]
    qkey = _primary_quality_key(tasks[0])
    for r, flag in zip(all_rows, pareto_front(all_rows, "speedup", qkey)):
        r["pareto"] = flag
    meta = {
        "machine": machine_info(),
        "model": enc.name,
        "tasks": [t.name for t in tasks],
        "sources": {t.name: t.source for t in tasks},
        "batch_size": batch_size,
        "timing_batches": timing_batches,
        "timed_texts": n_timed,
        "repeats": repeats,
        "primary_quality": qkey,
        "flops_unit": "MACs (FLOPs = 2 x MACs)",
        "timing": "median of interleaved runs vs the unreduced model in the same process",
        "memory": "peak tensor memory of one batch (allocator events)",
        "base_mem_bytes": base_mem,
    }
    return {"meta": meta, "rows": all_rows}


def _primary_quality_key(task: RetrievalTask | STSTask) -> str:
    return f"{task.name}:mrr" if isinstance(task, RetrievalTask) else f"{task.name}:spearman"
