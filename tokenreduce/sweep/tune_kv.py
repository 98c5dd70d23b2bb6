"""``tokenreduce tune`` for causal LMs: which KV press and keep to use on the user's model and text.

A point is a press (:func:`tokenreduce.kv.make_press`) at one keep, measured on windows of the user's own
text: each window's context is prefilled once with the full cache (kept for every point), the press
compresses a copy of that cache, and the window's continuation is fed teacher-forced on top of it. Quality
needs no labels: ``agreement`` is the share of continuation positions whose greedy (top-1) token is the one
the full cache gives; ``accuracy`` is the share where it is the text's own next token (the unreduced model's
accuracy is its baseline); the mean KL to the full cache is recorded beside them. Speed is measured end to
end: prefill, compression and ``decode_tokens`` greedy steps with the press against the same call with the
full cache, interleaved in this process (median of ``repeats``). Points are sweep points written to the
sweep store as they are measured, so the :class:`~tokenreduce.sweep.tune.Tuner` search, resume and report
serve encoders and causal LMs alike.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from .config import Point
from .measure import outcome_of
from .store import Outcome
from .tune_data import Record, Tolerance, tolerance_from

# query-agnostic eviction presses that need no calibration, cost no extra model pass and take ``keep`` alone
DEFAULT_PRESSES = ("snapkv", "adakv", "pyramidkv", "tova", "streaming_llm", "keydiff", "expected_attention",
                   "key_norm")
COARSE_KEEPS = (0.75, 0.5, 0.25, 0.15)
METRICS = ("agreement", "accuracy")
# calibrated or reconstruction presses (their own setup), and presses whose budget is not ``keep`` alone
EXCLUDED = {"qfilters": "needs calibrated filters (calibrate_qfilters)",
            "duo_attention": "needs calibrated retrieval heads",
            "kvzip": "runs a reconstruction pass per prompt (bench kv measures it)",
            "think": "prunes key channels (channel_keep), not entries",
            "zipcache": "quantizes (salient), its budget is not keep alone",
            "decoding": "a decode-time budget (target), not a prompt keep",
            "rkv": "a decode-time budget (target), not a prompt keep"}


def check_presses(chosen: Sequence[str] | None) -> list[str]:
    """The presses to search: ``chosen`` (each made once at keep 0.5, so a bad name fails here) or the defaults."""
    from ..kv import make_press, presses

    if chosen is not None and not chosen:
        raise ValueError("--methods is empty")
    valid = [p for p in presses() if p not in EXCLUDED]
    for name in chosen or []:
        if name in EXCLUDED:
            raise ValueError(f"press {name!r} is not tuned here: it {EXCLUDED[name]}; choose from {', '.join(valid)}")
        if name not in presses():
            raise ValueError(f"unknown press {name!r} for a causal LM; choose from {', '.join(valid)}")
        make_press(name, keep=0.5)
    return list(chosen or DEFAULT_PRESSES)


def make_tolerance(max_loss: str | None, min_fidelity: str | None, metric: str | None) -> Tolerance:
    """The causal-LM tolerance: ``--max-loss`` relative on ``metric`` (agreement by default; 1% when neither
    is given) or ``--min-fidelity``, a floor on greedy agreement with the full cache."""
    return tolerance_from(max_loss, min_fidelity, metric, valid=METRICS, data="a causal LM", floor_metric="agreement",
                          bounds="greedy agreement with the full cache", floor_unit="a share of agreeing tokens")


def metric_key(task: str, metric: str) -> str:
    """The metrics key holding ``metric`` for ``task``."""
    return f"{task}:{metric}"


def text_windows(tokenizer, records: Sequence[Record], context: int, continuation: int, limit: int,
                 what: str) -> list[Any]:
    """Consecutive, non-overlapping windows (``context`` tokens + the ``continuation`` that follows) of the
    split's texts joined by blank lines, at most ``limit``; a ``ValueError`` naming the fix when not one fits."""
    import torch

    from ..kv.data import Sample

    ids = tokenizer("\n\n".join(r.text for r in records), add_special_tokens=False).input_ids
    size = context + continuation
    n = min(limit, len(ids) // size)
    if n < 1:
        raise ValueError(f"the {what} split holds {len(ids)} tokens, fewer than one window of {context} + "
                         f"{continuation}; give more text or lower --context-tokens / --continuation-tokens")
    t = torch.tensor(ids[: n * size]).view(n, size)
    return [Sample(t[i : i + 1, :context], t[i : i + 1, context:]) for i in range(n)]


def decode_macs(model: Any, context: int, kept: float) -> tuple[float, float]:
    """(MACs, MACs of the full cache) of one greedy decoding step with ``kept`` of a ``context``-entry cache: every
    linear layer (projections, MLP, LM head) once, plus each layer's attention over its cache (q.k and
    weights.v: 2 x query heads x head_dim MACs per entry). Prefill MACs are the same with and without a press."""
    from torch import nn

    cfg = model.config
    weights = sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = cfg.num_hidden_layers * 2 * cfg.num_attention_heads * head_dim * context
    return weights + attention * kept, weights + attention


@dataclass
class KVTuneMeasurer:
    """Measures press points on prepared windows; keeps each window's full prefill for every point after it."""

    model: Any
    tokenizer: Any
    samples: dict[str, list[Any]]  # task spec -> windows
    _prefills: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)

    def _prepared(self, spec: str) -> list[tuple[Any, Any]]:
        """(prefill, full-cache continuation logits) per window of ``spec``, computed once."""
        from ..kv.bench import capture_prefill, continuation_logits, press_cache

        if spec not in self._prefills:
            out = []
            for s in self.samples[spec]:
                pre = capture_prefill(self.model, s.context)
                out.append((pre, continuation_logits(self.model, press_cache(self.model, pre, None), pre.n,
                                                     s.continuation)))
            self._prefills[spec] = out
        return self._prefills[spec]

    def metrics(self, p: Point) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        """(metrics, meta, machine) of one point; raises on failure."""
        import torch

        from ..bench.report import machine_info
        from ..bench.timing import time_pair
        from ..kv import cache as kvc
        from ..kv import make_press
        from ..kv.bench import continuation_logits, kl_rows, press_cache
        from ..kv.generate import generate_ids
        from ..kv.ragged import ragged_attention_for

        s, spec = p.settings, p.tasks[0]
        task = spec.split("@")[0]
        press = make_press(p.method, **p.params)
        threads = torch.get_num_threads()
        if s["threads"]:
            torch.set_num_threads(s["threads"])
        try:
            agree, acc, base_acc, kl, kv_ratio = [], [], [], [], []
            with torch.no_grad():
                for (pre, ref), sample in zip(self._prepared(spec), self.samples[spec]):
                    cache = press_cache(self.model, pre, press, self.tokenizer)
                    kv_ratio.append(kvc.kv_bytes(cache) / kvc.kv_bytes(pre.cache))
                    with ragged_attention_for(self.model, press):
                        got = continuation_logits(self.model, cache, pre.n, sample.continuation)
                    target = sample.continuation[0, 1:]
                    agree.append(float((got.argmax(-1) == ref.argmax(-1)).double().mean()))
                    acc.append(float((got[0, :-1].argmax(-1) == target).double().mean()))
                    base_acc.append(float((ref[0, :-1].argmax(-1) == target).double().mean()))
                    kl.append(float(kl_rows(ref, got).mean()))
                ids = self.samples[spec][0].context
                steps = s["decode_tokens"]
                tb, tp = time_pair(lambda: generate_ids(self.model, ids, max_new_tokens=steps),
                                   lambda: generate_ids(self.model, ids, press=press, max_new_tokens=steps,
                                                        tokenizer=self.tokenizer),
                                   repeats=s["repeats"])
            machine = machine_info()
        finally:  # the caller's process keeps its own setting
            torch.set_num_threads(threads)
        n = len(agree)
        macs, full_macs = decode_macs(self.model, int(ids.shape[1]), sum(kv_ratio) / n)
        metrics = {
            metric_key(task, "agreement"): sum(agree) / n, metric_key(task, "accuracy"): sum(acc) / n,
            metric_key(task, "kl"): sum(kl) / n, f"base:{metric_key(task, 'agreement')}": 1.0,
            f"base:{metric_key(task, 'accuracy')}": sum(base_acc) / n, f"base:{metric_key(task, 'kl')}": 0.0,
            "kv_bytes_ratio": sum(kv_ratio) / n, "flops_ratio": macs / full_macs, "gmacs_per_text": macs / 1e9,
            "speedup": tb.median_s / tp.median_s,
            "time_s": tp.median_s, "base_time_s": tb.median_s,
            "latency_ms": 1e3 * tp.median_s / steps, "base_latency_ms": 1e3 * tb.median_s / steps,
        }
        if not all(math.isfinite(v) for v in metrics.values()):
            raise FloatingPointError(f"non-finite metrics for {p.label}: {metrics}")
        meta = {"tasks": list(p.tasks), "windows": n, "context_tokens": int(ids.shape[1]),
                "primary_quality": metric_key(task, "agreement"),
                "flops_unit": "MACs of one decoding step at the window's context length (flops_ratio)",
                "timing": f"prefill + compression + {steps} greedy tokens of window 0, median of {s['repeats']} "
                          "interleaved with the full cache"}
        return metrics, meta, machine

    def run(self, p: Point) -> Outcome:
        """Measure ``p``; a failure is returned as an outcome with its error, not raised."""
        return outcome_of(p, self.metrics)
