"""``tokenreduce bench prompt``: answer retention, rate adherence and speed of prompt compression.

tokenreduce bench prompt retention --data nq20:150,hotpotqa --methods first,random,extractive,extractive-emb
tokenreduce bench prompt adherence --rates 0.5,0.25,0.125
tokenreduce bench prompt speed --tokens 10000 --repeats 5
"""

from __future__ import annotations

import argparse
import sys
import time

from ..bench.report import format_table, machine_info, write_results
from ..cli.args import HelpFormatter
from ..cli_errors import user_error
from .bench_setup import VARIANTS, check_variants, make_compressor, require_data, split_variant
from .methods import make_prompt_method


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in _names(text)]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from e


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,prog="tokenreduce bench prompt", description=__doc__.split("\n")[0])
    p.add_argument("what", choices=["retention", "adherence", "speed"])
    p.add_argument(
        "--data",
        type=_names,
        default=["nq20:150", "hotpotqa"],
        help="retention: nq20[:N][@OFFSET], hotpotqa[:N][@OFFSET] (e.g. hotpotqa:50@50: questions 50-99)",
    )
    p.add_argument(
        "--methods",
        type=_names,
        default=["first", "random", "extractive", "extractive-emb"],
        help=f"variants: {', '.join(VARIANTS)}",
    )
    p.add_argument("--rates", type=_floats, default=[0.5, 0.25, 0.125], help="fractions of tokens kept")
    p.add_argument("--tokenizer", default="cl100k_base", help="target tokenizer for budgets (tiktoken name or folder)")
    p.add_argument("--tokens", type=int, default=10000, help="speed: context length in target tokens")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", default=None, help="write OUT.json / OUT.csv")
    p.add_argument("--no-progress", action="store_true")
    return p


def _compressors(names: list[str], tokenizer: str, data_dir: str | None):
    """The variants' compressors; extractive variants share one memoized sentence encoder (loaded once)."""
    from .bench import MemoEncoder
    from .methods.extractive import Extractive
    from .text_encoder import load_text_encoder

    check_variants(names)
    out, memo = {}, None
    for n in names:
        method, params, options = split_variant(n)
        cfg = make_prompt_method(method, **params)
        if isinstance(cfg, Extractive):
            memo = memo or MemoEncoder(load_text_encoder(cfg.model, max_length=cfg.max_length))
            out[n] = make_compressor(cfg.load(memo), tokenizer, data_dir, **options)
        else:
            out[n] = make_compressor(n, tokenizer, data_dir)
    return out, memo


def _datasets(specs: list[str], data_dir):
    from .bench_data import hotpotqa, nq20

    data = require_data(data_dir)
    sets = {}
    for spec in specs:
        name, _, rest = spec.partition(":")
        count, _, off = rest.partition("@")
        n = int(count) if count else None
        if name == "nq20":
            sets[spec] = nq20(data, n=n or 150, offset=int(off or 0))
        elif name == "hotpotqa":
            sets[spec] = hotpotqa(data, n=n, offset=int(off or 0))
        else:
            raise ValueError(f"unknown data set {spec!r}; use nq20[:N][@OFFSET] or hotpotqa[:N][@OFFSET]")
    return sets


def _retention(a) -> dict:
    from tqdm import tqdm

    from .bench import retention

    comps, memo = _compressors(a.methods, a.tokenizer, a.data_dir)
    sets = _datasets(a.data, a.data_dir)
    rows = []
    for spec, examples in sets.items():
        for name, comp in comps.items():
            bar = tqdm(total=len(examples), desc=f"{spec} {name}", disable=a.no_progress, file=sys.stderr)
            t = time.perf_counter()
            res = retention(examples, comp, a.rates, on_example=bar.update)
            bar.close()
            for rate, r in res.items():
                rows.append(
                    {
                        "data": spec,
                        "method": name,
                        "rate": rate,
                        "x": round(1 / rate, 2),
                        **r,
                        "wall_s": time.perf_counter() - t,
                    }
                )
            print(f"[done] {spec} {name}", file=sys.stderr, flush=True)
        if memo is not None:
            memo.clear()
    cols = ["data", "method", "x", "answer", "support", "gold_docs", "ratio", "whole", "n_answerable"]
    print(format_table(rows, cols))
    return {"rows": rows}


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    try:
        if any(not (0 < r <= 1) for r in a.rates):
            raise ValueError("--rates must be in (0, 1]")
        check_variants(a.methods)
        if a.what == "retention":
            result = _retention(a)
        elif a.what == "adherence":
            from .bench_inputs import run_adherence

            result = run_adherence(a)
        else:
            from .bench_inputs import run_speed

            result = run_speed(a)
    except (ValueError, FileNotFoundError) as e:
        return user_error(e)
    result["meta"] = {"machine": machine_info(), "args": vars(a)}
    if a.out:
        j, c = write_results(result, a.out)
        print(f"wrote {j} and {c}")
    return 0
