"""``tokenreduce bench vision``: every vision method × keep schedule → MACs, CPU speed, accuracy.

tokenreduce bench vision                          # all methods, keep 0.7/0.5/0.3, both schedules
tokenreduce bench vision --no-timing              # accuracy + MACs only (seconds)
tokenreduce bench vision --methods tome,random --keep 0.5 --schedule constant --out results/vision
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch

from ..cli.args import HelpFormatter
from ..cli_errors import user_error
from .report import format_table, markdown_table, write_results
from .text_bench import RunConfig
from .vision_table import (
    DEFAULT_KEEPS,
    DEFAULT_SCHEDULES,
    build_configs,
    load_speed_rows,
    run_vision_table,
    vit_probe,
)

COLUMNS = [
    ("config", "config"),
    ("flops_ratio", "MAC ratio"),
    ("speedup", "speedup"),
    ("throughput", "images/s"),
    ("final_tokens", "tokens out"),
    ("accuracy", "accuracy"),
    ("acc_change", "Δacc (pts)"),
    ("agreement", "top-1 agree"),
    ("digits_flops_ratio", "digits MAC ratio"),
    ("pareto", "Pareto"),
]


def _parser() -> argparse.ArgumentParser:
    from ..cli.args import floats as _floats
    from ..cli.args import names as _names

    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="tokenreduce bench vision",
        description=(
            "Vision token reduction: analytic MACs and CPU throughput on ViT-B/16 (random weights, "
            "interleaved with the unreduced model), accuracy and top-1 agreement on the trained digits ViT."
        ),
    )
    p.add_argument("--methods", type=_names, default=None, help="methods (default: every registered method)")
    p.add_argument(
        "--keep", type=_floats, default=None, help="keep rates (default 0.7,0.5,0.3; none when only --config is given)"
    )
    p.add_argument(
        "--schedule", type=_names, default=list(DEFAULT_SCHEDULES), help="constant,decreasing (default both)"
    )
    p.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="METHOD:K=V,...",
        help="add one explicit config, e.g. tome:keep=0.4,schedule=decreasing (repeatable)",
    )
    p.add_argument("--repeats", type=int, default=5, help="timed runs per config (median reported)")
    p.add_argument("--batch-size", type=int, default=8, help="ViT-B/16 timing batch")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--no-timing", action="store_true", help="accuracy and MACs only (fast)")
    p.add_argument(
        "--speed-from",
        default=None,
        metavar="JSON",
        help="reuse the ViT-B/16 timings of an earlier --out JSON (same configs) instead of timing now",
    )
    p.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    p.add_argument("--out", default=None, help="write results to OUT.json and OUT.csv")
    p.add_argument("--no-progress", action="store_true")
    return p


def _validate(a: argparse.Namespace) -> None:
    bad = [s for s in a.schedule if s not in DEFAULT_SCHEDULES]
    if bad or not a.schedule:
        raise ValueError(f"--schedule must be a comma-separated subset of {','.join(DEFAULT_SCHEDULES)}, got {bad}")
    if a.repeats < 1:
        raise ValueError(f"--repeats must be >= 1, got {a.repeats}")
    if a.batch_size < 1:
        raise ValueError(f"--batch-size must be >= 1, got {a.batch_size}")
    if a.keep is None:
        a.keep = [] if a.config and not a.methods else list(DEFAULT_KEEPS)
    if not a.keep and not a.config:
        raise ValueError("--keep is empty and no --config given: nothing to run")


def _log_row(row: dict[str, Any]) -> None:
    speed = f", speedup {row['speedup']:.2f}" if "speedup" in row else ""
    print(
        f"[done] {row['config']}: MACs {row['flops_ratio']:.3f}{speed}, accuracy {row['accuracy']:.4f}, "
        f"agreement {row['agreement']:.4f}",
        file=sys.stderr,
        flush=True,
    )


def _print(result: dict[str, Any], markdown: bool) -> None:
    cols = [(c, h) for c, h in COLUMNS if any(c in r for r in result["rows"])]
    render = markdown_table if markdown else format_table
    print(render(result["rows"], [c for c, _ in cols], [h for _, h in cols]))
    for s in result["skipped"]:
        print(f"skipped {s['method']}: {s['reason']}")
    meta = result["meta"]
    m = meta["machine"]
    speed = (
        f"speedup = {meta['timing']} ({meta['repeats']} runs, batch {meta['batch_size']}, {meta['speed_model']}); "
        if meta["timing"]
        else "no timing; "
    )
    print(
        f"\n{m['cpu']}, {m['torch_threads']} threads, torch {m['torch']}; "
        f"MAC ratio on ViT-B/16 ({meta['flops_unit']}); "
        f"{speed}accuracy: {meta['accuracy_model']}, {meta['accuracy_data']}; Pareto: {meta['pareto']}; "
        f"wall time {meta.get('wall_s', 0):.0f} s"
    )


def main(argv: list[str] | None = None) -> int:
    from ..cli import parse_config

    a = _parser().parse_args(argv)
    start = time.perf_counter()
    try:
        _validate(a)
        extra = [RunConfig(*parse_config(text)) for text in a.config]
        build_configs(a.methods, a.keep, a.schedule, extra)  # user errors surface before loading anything
        speed = load_speed_rows(a.speed_from) if a.speed_from and not a.no_timing else None
        if a.threads:
            torch.set_num_threads(a.threads)
        from .vision_testbed import DigitsTestbed

        tb = DigitsTestbed()
        names = a.methods if a.methods is not None else (None if a.keep else [])
        configs, skipped = build_configs(names, a.keep, a.schedule, extra, probe=vit_probe(tb))
        result = run_vision_table(
            configs,
            tb,
            timing=not a.no_timing,
            repeats=a.repeats,
            batch_size=a.batch_size,
            progress=not a.no_progress,
            on_row=None if a.no_progress else _log_row,
            speed_rows=speed,
        )
    except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
        return user_error(e)
    if speed is not None:
        result["meta"]["speed_from"] = a.speed_from
    result["skipped"] = [{"method": s.method, "reason": s.reason} for s in skipped]
    result["meta"]["wall_s"] = time.perf_counter() - start
    _print(result, a.markdown)
    if a.out:
        j, c = write_results(result, Path(a.out))
        print(f"\nwrote {j} and {c}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
