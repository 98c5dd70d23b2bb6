"""``tokenreduce bench diffusion``: per-denoising-step speed, memory and MACs of diffusion token reduction
on SD-1.5 / DiT-XL/2-shaped models (``--table speed``), or sample quality on the digits DiT trained here
(``--table quality``: digits-ViT accuracy, pixel error vs the unreduced sample from the same noise).

Every ratio is against the unreduced model measured in the same process (timing rounds interleaved).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from ..bench.report import format_table, machine_info
from ..cli.args import HelpFormatter, floats, names
from ..cli_errors import user_error
from .bench import SPEED_MODELS, bench_macs, bench_quality, bench_speed, quality_configs, sample_grid, speed_configs
from .methods import diffusion_methods, make_diffusion_method

SPEED_COLS = ["model", "config", "step_s", "speedup", "macs_ratio", "block_macs_ratio", "step_gmacs", "peak_mb",
              "memory_ratio"]
QUALITY_COLS = ["config", "accuracy", "pixel_err_mean", "pixel_err_max", "block_macs_ratio"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="tokenreduce bench diffusion", description=__doc__)
    p.add_argument("--table", choices=("speed", "macs", "quality"), default="speed",
                   help="speed: time/memory/MACs per step; macs: analytic MACs only (meta device, instant); "
                        "quality: the digits DiT")
    p.add_argument("--models", type=names, default="unet-512,dit-256",
                   help=f"speed models, comma list of {', '.join(SPEED_MODELS)}")
    p.add_argument("--methods", type=names, default="tomesd,todo,dit-merge",
                   help=f"comma list of {', '.join(diffusion_methods())}")
    p.add_argument("--ratios", type=floats, default="0.3,0.5,0.7", help="merge ratios (ToDo: its 2x2 pooling)")
    p.add_argument("--repeats", type=int, default=3, help="speed: timed rounds (each visits every config once)")
    p.add_argument("--no-memory", action="store_true", help="speed: skip the peak-memory call per config")
    p.add_argument("--samples", type=int, default=100, help="quality: samples per config (balanced classes)")
    p.add_argument("--steps", type=int, default=25, help="quality: DDIM steps")
    p.add_argument("--guidance", type=float, default=3.0, help="quality: classifier-free guidance scale")
    p.add_argument("--grid", help="quality: write a PNG of the first 10 samples of every config here")
    p.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is; 1 is steadiest on a "
                                                          "shared machine)")
    p.add_argument("--out", help="write OUT.json (everything) and OUT.csv (the main table)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        unknown = sorted(set(args.methods) - set(diffusion_methods()))
        if unknown:
            raise ValueError(f"unknown methods {unknown}; choose from {', '.join(diffusion_methods())}")
        bad = sorted(set(args.models) - set(SPEED_MODELS))
        if bad:
            raise ValueError(f"unknown --models {bad}; choose from {', '.join(SPEED_MODELS)}")
        if args.repeats < 1 or args.samples < 1 or args.steps < 1 or not args.ratios:
            raise ValueError("--repeats, --samples, --steps must be >= 1 and --ratios non-empty")
        if args.table in ("speed", "macs"):
            plans = {m: speed_configs(args.methods, args.ratios, m.split("-")[0]) for m in args.models}
        else:
            plans = {"dit-digits": quality_configs(args.methods, args.ratios)}
        for configs in plans.values():  # every config checked before any model is built
            for c in configs:
                make_diffusion_method(c.method, **c.params)
    except ValueError as e:
        return user_error(e)
    import torch
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    info = machine_info()
    info["load_before"] = _load()
    if args.table == "macs":
        rows = [r for model, configs in plans.items() for r in bench_macs(model, configs)]
        cols = ["model", "config", "step_gmacs", "block_gmacs", "macs_ratio", "block_macs_ratio",
                "macs_speedup_bound"]
    elif args.table == "speed":
        total = sum((1 + len(c)) * (args.repeats + (0 if args.no_memory else 1)) + 1 for c in plans.values())
        bar = tqdm(total=total, desc="bench diffusion", unit="call", disable=args.no_progress)
        rows = []
        try:
            for model, configs in plans.items():
                def step(label: str, model: str = model) -> None:
                    bar.set_postfix_str(f"{model} {label}"[:48])
                    bar.update(1)
                rows += bench_speed(model, configs, args.repeats, not args.no_memory, progress=step)
        finally:
            bar.close()
        cols = SPEED_COLS if not args.no_memory else SPEED_COLS[:-2]
    else:
        configs = plans["dit-digits"]
        chunks = -(-args.samples // 50)
        bar = tqdm(total=(1 + len(configs)) * args.steps * chunks, desc="bench diffusion quality", unit="step",
                   disable=args.no_progress)
        try:
            rows, images = bench_quality(configs, args.samples, args.steps, args.guidance, progress=bar.update)
        finally:
            bar.close()
        if args.grid:
            sample_grid(images).save(args.grid, optimize=True)
        cols = QUALITY_COLS
    info["load_after"] = _load()
    print(f"{info['cpu']}, {info['torch_threads']} threads; load average {info['load_before']} -> {info['load_after']}")
    print(format_table(rows, cols))
    if args.out:
        from ..bench.report import write_results

        paths = write_results({"machine": info, "table": args.table, "rows": rows}, args.out)
        print("wrote " + " and ".join(map(str, paths)))
    return 0


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "?"
