"""Accuracy of visual-token methods on the trained digits VLM (:mod:`tokenreduce.bench.vlm_testbed`), with cost.

Per method x budget, on the held-out questions: accuracy per question type and overall, agreement with the
unpruned model's answers, measured prefill MACs of one question (``FlopCounterMode``, vision tower and the
method's scoring included; FLOPs = 2 x MACs) as a ratio to the unpruned model, KV-cache bytes of that
prefill, and the median prefill time of one batch of questions, timed round-robin with the unpruned model in
the same process (so load drift hits every config alike) and reported as a ratio.

:func:`bench_quality` takes the testbed module and the rows' leading columns as arguments, so the video
testbed's table (:mod:`tokenreduce.vlm.video.bench_quality`) is the same loop.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Protocol

import torch
from torch import nn

from ..bench import vlm_testbed
from ..bench.flops import measured_flops
from .bench import _kv_bytes, _patched, _round_robin  # one patch, byte count and timing loop for both VLM tables
from .methods import REGISTRY, VisualMethod, make_vlm_method, vlm_methods

BASELINES = ("visual-random",)  # always in the table
DOWNSAMPLE_HINTS = ("downsampl", "resize")  # the image-downsampling baseline, whatever its registered name


def image_methods() -> list[str]:
    """Every registered method that reduces an image's tokens (video-only methods left out)."""
    return [m for m in vlm_methods() if not getattr(REGISTRY.get(m), "needs_video", False)]


def baselines() -> list[str]:
    """The random baseline, and the downsampling one where a method of that kind is registered."""
    return [*BASELINES, *(m for m in image_methods() if any(h in m for h in DOWNSAMPLE_HINTS))]


def table_methods(requested: Iterable[str] | None = None) -> list[str]:
    """``requested`` (default: every registered image method) with the baselines added, in registry order."""
    want = set(image_methods() if requested is None else requested) | set(baselines())
    return [m for m in vlm_methods() if m in want]


def configs(methods: Iterable[str], tokens: Iterable[int]) -> tuple[list[VisualMethod], list[dict]]:
    """Every method at every budget, and the (method, reason) of those that cannot be built with one."""
    out, skipped = [], []
    for m in methods:
        for t in tokens:
            try:
                out.append(make_vlm_method(m, tokens=t))
            except (ValueError, TypeError) as e:
                skipped.append({"method": m, "visual_tokens": t, "reason": str(e)})
    return out, skipped


@torch.no_grad()
def _prefill_cost(model: nn.Module, x: dict) -> tuple[int, int]:
    """(MACs, KV bytes) of one prefill."""
    box: list[int] = []
    flops = measured_flops(lambda: box.append(_kv_bytes(model(**x, use_cache=True, logits_to_keep=1).past_key_values)))
    return flops // 2, box[0]


class Testbed(Protocol):
    """What the table needs of a trained testbed module (:mod:`~tokenreduce.bench.vlm_testbed`, the video one):
    its question types, equal-length input batches, greedy answers and their accuracy."""

    QTYPES: tuple[str, ...]

    def batches(self, tokenizer, examples: list, size: int) -> list[tuple[list[int], dict]]: ...

    def answer_ids(self, model: nn.Module, tokenizer, examples: list, batch_size: int = 50) -> list[int]: ...

    def accuracy(self, tokenizer, examples: list, ids: list[int]) -> dict[str, float]: ...


def image_columns(model: nn.Module, one: dict) -> Callable[[VisualMethod | None], dict]:
    """The digits-VLM table's leading columns of a config (None: the unpruned model): method, stage, tokens."""
    n_vis = int((one["input_ids"] == model.config.image_token_id).sum())

    def columns(cfg: VisualMethod | None) -> dict:
        if cfg is None:
            return {"method": "unpruned", "stage": "-", "visual_tokens": n_vis}
        return {"method": cfg.name, "stage": cfg.stage, "visual_tokens": cfg.tokens}

    return columns


def bench_quality(
    model: nn.Module,
    tokenizer,
    examples: list,
    cfgs: list[VisualMethod],
    repeats: int = 3,
    time_batch: int = 16,
    batch_size: int = 50,
    progress: Callable[[str], None] | None = None,
    testbed: Testbed = vlm_testbed,
    columns: Callable[[dict], Callable[[VisualMethod | None], dict]] | None = None,
) -> list[dict]:
    """One row per config, after the unpruned model's row. A config that the model refuses (its family or
    depth does not support it) is left out and reported under ``skipped`` in its place. ``columns`` (given the
    model inputs of one question) names each row's leading columns (default: :func:`image_columns`)."""
    one = testbed.batches(tokenizer, examples[:1], 1)[0][1]
    label = (columns or (lambda x: image_columns(model, x)))(one)
    same = [e for e in examples if e.qtype == examples[0].qtype][:time_batch]
    timed = testbed.batches(tokenizer, same, time_batch)[0][1]
    rows: list[dict] = []
    runs: list[VisualMethod | None] = []
    base_ids: list[int] = []
    base: dict = {}
    for cfg in [None, *cfgs]:
        head = label(cfg)
        if progress:
            progress(" ".join(str(v) for v in head.values()))
        try:
            with _patched(model, cfg):
                ids = testbed.answer_ids(model, tokenizer, examples, batch_size)
                macs, kv = _prefill_cost(model, one)
        except (ValueError, TypeError) as e:
            rows.append({**head, "skipped": str(e)})
            continue
        if cfg is None:
            base_ids, base = ids, {"macs": macs, "kv": kv}
        acc = testbed.accuracy(tokenizer, examples, ids)
        rows.append(
            {
                **head,
                **{f"acc_{q}": round(acc.get(q, float("nan")), 4) for q in testbed.QTYPES},
                "accuracy": round(acc["overall"], 4),
                "agree": round(sum(a == b for a, b in zip(ids, base_ids)) / len(ids), 4),
                "macs": macs,
                "macs_ratio": round(macs / base["macs"], 3),
                "kv_bytes": kv,
                "kv_ratio": round(kv / base["kv"], 3),
            }
        )
        runs.append(cfg)
    times = _round_robin(model, timed, runs, repeats, progress, per_config=False)
    measured = [r for r in rows if "skipped" not in r]
    for row, t in zip(measured, times, strict=True):
        row["prefill_ms"] = round(1000 * statistics.median(t), 2)
        row["time_ratio"] = round(statistics.median(t) / statistics.median(times[0]), 3)
    return rows
