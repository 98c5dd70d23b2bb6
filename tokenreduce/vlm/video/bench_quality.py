"""Accuracy of video methods on the trained moving-digits video model (:mod:`tokenreduce.bench.video_testbed`),
with cost.

The digits-VLM table's loop (:func:`tokenreduce.vlm.bench_quality.bench_quality`) on the video testbed: per
method x share of the video tokens kept, on the held-out questions, accuracy per question type and overall,
agreement with the unreduced model's answers, measured prefill MACs of one question (``FlopCounterMode``, vision
tower and the method's own work included) and the KV bytes that prefill leaves, the median prefill time of a
batch timed round-robin with the unreduced model in the same process. Added here: ``llm_macs_ratio``, the
family's analytic cost model (:func:`tokenreduce.vlm.flops.prefill_macs`: every LLM layer at its token count,
the method's similarity products and its stage inside the LLM; no vision tower, the same for every row), and
``decode_read_ratio``, the KV entries a decoding step attends to (DyCoke's KV stage reads fewer than it stores).

The baselines (uniform frame subsampling, spatial pooling per frame, random tokens) are always in the table; the
methods' stages inside the LLM (:data:`.bench.STAGED`) sit at the papers' layers, clamped below the model's last.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from torch import nn

from ..bench_quality import Testbed, bench_quality
from ..families import find_vlm
from ..flops import DecoderShape, prefill_macs
from .base import VideoMethod
from .bench import STAGED, make_video_method
from .methods import VIDEO_METHODS

BASELINES = ("video-frames", "video-pool", "video-random")  # always in the table


def table_methods(requested: Iterable[str] | None = None, depth: int = 2) -> list[str]:
    """``requested`` (default: every video method, and the staged rows when the LLM has >= 2 layers) with the
    baselines added, in registry order then the staged rows."""
    order = [*VIDEO_METHODS, *STAGED]
    default = order if depth >= 2 else list(VIDEO_METHODS)
    want = set(default if requested is None else requested) | set(BASELINES)
    return [m for m in order if m in want]


def configs(methods: Iterable[str], keeps: Iterable[float], depth: int) -> tuple[list[VideoMethod], dict]:
    """Every method at every kept share (stages clamped to a ``depth``-layer LLM and checked against it, before
    any compute) and each config's row name (a staged row is named by its :data:`STAGED` key)."""
    out, names = [], {}
    for m in methods:
        for k in keeps:
            cfg = make_video_method(m, k, depth)
            cfg.check_depth(depth)
            out.append(cfg)
            names[cfg] = m
    return out, names


def video_columns(model: nn.Module, names: dict) -> Callable[[dict], Callable[[VideoMethod | None], dict]]:
    """Given one question's inputs, the leading columns of each config's row: name, kept share, video tokens
    kept, the analytic LLM MACs ratio and the decode-read ratio (the family's cost model)."""

    def at(one: dict) -> Callable[[VideoMethod | None], dict]:
        ids = one["input_ids"]
        videos = find_vlm(model).videos(ids, one)[0]
        layout = [(v.frames, *v.grid) for v in videos]
        n = ids.shape[1]
        text_after = n - max(v.start + v.n for v in videos)
        shape = DecoderShape.of(model.config.text_config)
        base = prefill_macs(shape, None, n, layout, text_after)

        def columns(cfg: VideoMethod | None) -> dict:
            if cfg is None:
                return {"method": "unreduced", "keep": 1.0, "visual_tokens": sum(v.n for v in videos),
                        "llm_macs_ratio": 1.0, "decode_read_ratio": 1.0}
            read = cfg.decode_counts(n, layout, shape.layers)
            return {
                "method": names.get(cfg, cfg.name),
                "keep": cfg.keep,
                "visual_tokens": sum(cfg.kept_video(t, (h, w)) for t, h, w in layout),
                "llm_macs_ratio": round(prefill_macs(shape, cfg, n, layout, text_after) / base, 3),
                "decode_read_ratio": round(sum(read) / (n * shape.layers), 3),
            }

        return columns

    return at


def bench_video_quality(
    model: nn.Module,
    tokenizer,
    examples: list,
    cfgs: list[VideoMethod],
    names: dict,
    testbed: Testbed,
    repeats: int = 3,
    time_batch: int = 16,
    batch_size: int = 50,
    progress: Callable[[str], None] | None = None,
) -> list[dict]:
    """The unreduced row, then one row per config (see the module docstring)."""
    return bench_quality(model, tokenizer, examples, cfgs, repeats, time_batch, batch_size, progress,
                         testbed=testbed, columns=video_columns(model, names))
