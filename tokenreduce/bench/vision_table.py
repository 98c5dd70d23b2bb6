"""The vision table: method × keep schedule → MACs, CPU speed on ViT-B/16, accuracy on the testbed.

Each row joins two measurements of the same method configuration:
  * cost on ViT-B/16 at 224 px (197 tokens), random weights, batch 8: analytic MAC ratio and CPU
    throughput ratio, median of runs interleaved with the unreduced model in the same process
    (:func:`tokenreduce.bench.vision_bench.run_vision_bench`);
  * quality on the trained digits ViT (65 tokens, :mod:`tokenreduce.bench.vision_testbed`): test
    accuracy and top-1 agreement with the unreduced model on the 449 held-out images.
A method whose parameters do not fit a grid point (e.g. no ``keep``), or that cannot run on a
ViT, is listed under ``skipped`` with the reason instead of failing the table.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from tqdm.auto import tqdm

from ..core.dims import ModelDims
from ..encoder.cost import encoder_cost, layer_widths, total_macs
from ..encoder.methods import make_method, methods
from .report import machine_info, pareto_front
from .text_bench import RunConfig
from .vision_testbed import DigitsTestbed

DEFAULT_KEEPS = (0.7, 0.5, 0.3)
DEFAULT_SCHEDULES = ("constant", "decreasing")
# ViT-B/16 (Dosovitskiy et al. 2021) at 224 px: the model timed by vision_bench.vit_b16()
VIT_B16 = ModelDims(hidden=768, heads=12, head_dim=64, ffn=3072, layers=12)
VIT_B16_TOKENS = 197


@dataclass(frozen=True)
class Skipped:
    method: str
    reason: str


def _applies(cfg: RunConfig, probe: Callable[[RunConfig], None] | None) -> str | None:
    """None if ``cfg`` builds (and, with a probe, runs on a ViT); else the reason it does not."""
    try:
        make_method(cfg.method, **cfg.params)
        if probe is not None:
            probe(cfg)
    except (ValueError, TypeError, NotImplementedError, RuntimeError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _budget_key(cfg: RunConfig) -> tuple[int, ...]:
    """Tokens each layer removes, for ViT-B/16 and testbed-sized rows (to spot duplicate configs)."""
    m = make_method(cfg.method, **cfg.params)
    n0 = torch.tensor([VIT_B16_TOKENS - 1, 64])
    return tuple(m.budget().removals(n0, VIT_B16.layers, cap=m.cap).flatten().tolist())


def build_configs(
    names: Sequence[str] | None = None,
    keeps: Sequence[float] = DEFAULT_KEEPS,
    schedules: Sequence[str] = DEFAULT_SCHEDULES,
    extra: Sequence[RunConfig] = (),
    probe: Callable[[RunConfig], None] | None = None,
) -> tuple[list[RunConfig], list[Skipped]]:
    """The grid (every method × schedule × keep) plus ``extra`` configs, and what was skipped.

    Unknown method names are an error (before any compute); a registered method whose
    parameters do not fit (or that ``probe`` shows cannot run) is skipped with its reason.
    """
    names = list(names) if names is not None else methods()
    unknown = [n for n in names if n not in methods()]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available: {', '.join(methods())}")
    for k in keeps:
        if not 0.0 < float(k) <= 1.0:
            raise ValueError(f"keep must be in (0, 1], got {k}")
    configs: list[RunConfig] = []
    skipped: list[Skipped] = []
    for name in names:
        reasons, seen = [], set()
        for s in schedules:
            for k in keeps:
                cfg = RunConfig(name, {"keep": float(k), "schedule": s})
                why = _applies(cfg, probe)
                if why is None and (float(k), _budget_key(cfg)) in seen:
                    why = f"schedule={s} gives the same per-layer budget as an earlier schedule"
                if why is None:
                    seen.add((float(k), _budget_key(cfg)))
                    configs.append(cfg)
                elif why not in reasons:
                    reasons.append(why)
        if reasons:
            skipped.append(Skipped(name, "; ".join(reasons)))
    for cfg in extra:
        why = _applies(cfg, probe)
        if why is not None:
            raise ValueError(f"{cfg.label}: {why}")
        configs.append(cfg)
    return configs, skipped


def vit_b16_macs(method: Any, batch_size: int = 1) -> tuple[int, int]:
    """(MACs of ViT-B/16's blocks for ``batch_size`` images, tokens after the last layer)."""
    lengths = torch.full((batch_size,), VIT_B16_TOKENS)
    return (
        total_macs(encoder_cost(VIT_B16, lengths, method, 1)),
        layer_widths(lengths, VIT_B16.layers, method, 1)[-1][1],
    )


def load_speed_rows(path: str) -> dict[str, dict[str, Any]]:
    """Timing rows of an earlier ``bench vision`` / ``bench vit`` JSON result, by config label."""
    import json
    from pathlib import Path

    rows = json.loads(Path(path).read_text())["rows"]
    if not rows or any("speedup" not in r or "throughput" not in r for r in rows):
        raise ValueError(f"{path}: not a timed vision result (rows need speedup and throughput)")
    return {r["config"]: r for r in rows}


def _speed_rows(configs: Sequence[RunConfig], repeats: int, batch_size: int, progress: bool) -> dict[str, dict]:
    from .vision_bench import run_vision_bench, vit_b16

    res = run_vision_bench(vit_b16(), configs, batch_size=batch_size, repeats=repeats, progress=progress)
    return {r["config"]: r for r in res["rows"]}


def run_vision_table(
    configs: Sequence[RunConfig],
    testbed: DigitsTestbed | None = None,
    timing: bool = True,
    repeats: int = 5,
    batch_size: int = 8,
    progress: bool = True,
    on_row: Callable[[dict[str, Any]], None] | None = None,
    speed_rows: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Score every config on the testbed, time it on ViT-B/16 (unless ``timing=False``).

    ``speed_rows`` (config label → row with ``speedup``, ``throughput``, ``base_throughput``, as
    :func:`load_speed_rows` reads them) reuses timings measured earlier instead of timing now.
    """
    if timing and speed_rows is not None:
        missing = [label for label in ["none", *(c.label for c in configs)] if label not in speed_rows]
        if missing:
            raise ValueError(f"the given timings lack {missing}")
    tb = testbed or DigitsTestbed()
    base_macs, _ = vit_b16_macs(None)
    small = _small_dims(tb)
    small_len = torch.full((1,), tb.tokens)
    small_base = total_macs(encoder_cost(small, small_len))
    base = {
        "method": "none",
        "config": "none",
        "schedule": None,
        "keep": 1.0,
        "flops_ratio": 1.0,
        "gmacs_per_image": base_macs / 1e9,
        "final_tokens": VIT_B16_TOKENS,
        "accuracy": tb.base["accuracy"],
        "acc_change": 0.0,
        "agreement": 1.0,
        "digits_flops_ratio": 1.0,
    }
    rows = []
    for cfg in tqdm(configs, desc="accuracy", disable=not progress, unit="cfg"):
        m = make_method(cfg.method, **cfg.params)
        q = tb.score(m)
        macs, final = vit_b16_macs(m)
        row = {
            "method": cfg.method,
            "config": cfg.label,
            "schedule": cfg.params.get("schedule"),
            "keep": cfg.params.get("keep"),
            "params": cfg.params,
            "flops_ratio": macs / base_macs,
            "gmacs_per_image": macs / 1e9,
            "final_tokens": final,
            "accuracy": q["accuracy"],
            "acc_change": 100 * (q["accuracy"] - tb.base["accuracy"]),
            "agreement": q["agreement"],
            "digits_flops_ratio": total_macs(encoder_cost(small, small_len, m, 1)) / small_base,
        }
        rows.append(row)
        if on_row is not None and not timing:
            on_row(row)
    if timing and configs:
        speed = speed_rows or _speed_rows(configs, repeats, batch_size, progress)
        base["speedup"] = 1.0
        base["throughput"] = speed["none"]["throughput"]
        for row in rows:
            s = speed[row["config"]]
            row.update(speedup=s["speedup"], throughput=s["throughput"], base_throughput=s["base_throughput"])
            if on_row is not None:
                on_row(row)
    all_rows = [base, *rows]
    for r in all_rows:
        r["mac_speedup"] = 1.0 / r["flops_ratio"]
    gain = "speedup" if timing else "mac_speedup"
    for r, flag in zip(all_rows, pareto_front(all_rows, gain, "accuracy")):
        r["pareto"] = flag
    cfg = tb.model.config
    meta = {
        "machine": machine_info(),
        "speed_model": "ViT-B/16 (random weights), 224 px, 197 tokens",
        "batch_size": batch_size,
        "repeats": repeats if timing else 0,
        "timing": "median of interleaved runs vs the unreduced model in the same process" if timing else None,
        "flops_unit": "MACs (FLOPs = 2 x MACs), transformer blocks only, reducer's matmuls included",
        "accuracy_model": (
            f"ViTForImageClassification {cfg.num_hidden_layers} layers, hidden {cfg.hidden_size}, "
            f"patch {cfg.patch_size} on {cfg.image_size}px digits ({tb.tokens} tokens)"
        ),
        "accuracy_data": f"scikit-learn digits, fixed test split of {tb.base['n']} images",
        "pareto": f"{gain} vs accuracy",
    }
    return {"meta": meta, "rows": all_rows}


def _small_dims(tb: DigitsTestbed) -> ModelDims:
    from ..encoder.adapters.patching import resolve_family

    fam, _ = resolve_family(tb.model)
    return fam.dims(tb.model)


def vit_probe(tb: DigitsTestbed) -> Callable[[RunConfig], None]:
    """A probe for :func:`build_configs`: run the config on two testbed images (raises if it cannot)."""

    def probe(cfg: RunConfig) -> None:
        from .vision_testbed import evaluate

        evaluate(tb.model, tb.pixels[:2], tb.labels[:2], cfg.method, **cfg.params)

    return probe
