"""``tokenreduce bench ruler``: a RULER-style suite (generated here) through KV presses x keep fractions.

Needles in Paul Graham essays (single, multi-key, multi-value, multi-query), variable tracking, common
words, and NQ QA with distractor passages, at --length tokens; every press compresses the context before
the question is seen (query-agnostic; --query-aware puts the question in the compressed prefill).
Writes OUT.json (per-sample predictions + rows), OUT.csv (rows) and OUT.png (score vs keep).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..cli.args import HelpFormatter
from ..cli_errors import user_error
from .ruler import TASKS

DEFAULT_PRESSES = "snapkv,tova,kvzip,expected_attention,keydiff"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="tokenreduce bench ruler", description=__doc__)
    p.add_argument("--model", help="local HF model folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--data-dir", help="shared data dir with needle_haystack_paul_graham/ and lost_in_the_middle/ "
                                      "(default: auto-located shared/data)")
    p.add_argument("--length", type=int, default=4096, help="tokens per sample (context + question)")
    p.add_argument("--samples", type=int, default=4, help="samples per task")
    p.add_argument("--tasks", default=",".join(TASKS), help=f"comma list of {','.join(TASKS)}")
    p.add_argument("--presses", default=DEFAULT_PRESSES, help="comma list of name or name:param=value:...")
    p.add_argument("--keep", default="0.5,0.25,0.1", help="comma list of kept fractions in (0, 1]")
    p.add_argument("--query-aware", action="store_true", help="compress context + question (default: context only)")
    p.add_argument("--both-modes", action="store_true",
                   help="each sample query-agnostic then query-aware (a run cut short has both on the same samples)")
    p.add_argument("--no-batch", action="store_true",
                   help="decode every press's answer alone (default: equal-shape caches as one batch, same answers)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's choice, one per core; on a loaded machine 1 avoids "
                        "threads waiting on each other, which made this suite 10-40x slower)")
    p.add_argument("--out", help="write OUT.json, OUT.csv and OUT.png")
    p.add_argument("--records", help="no run: table/plot from an OUT.records.jsonl (e.g. a run cut short)")
    p.add_argument("--resume", action="store_true",
                   help="keep OUT.records.jsonl and run only the samples it lacks (same arguments as the cut run)")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    tasks = [t for t in args.tasks.split(",") if t]
    bad = [t for t in tasks if t not in TASKS]
    if bad or not tasks:
        return user_error(f"unknown --tasks {bad or args.tasks!r}; valid: {','.join(TASKS)}")
    if args.length < 64 or args.samples < 1:
        return user_error("need --length >= 64 and --samples >= 1")
    if args.resume and not args.out:
        return user_error("--resume needs --out (it continues OUT.records.jsonl)")
    if args.threads is not None and args.threads < 1:
        return user_error(f"--threads must be >= 1, got {args.threads}")
    if args.records:
        return _report([json.loads(line) for line in Path(args.records).read_text().splitlines() if line],
                       args, f"from {args.records}")
    from ..kv.presses.base import parse_press

    try:
        keeps = [float(k) for k in args.keep.split(",") if k]
        if not keeps or any(not 0.0 < k <= 1.0 for k in keeps):
            raise ValueError(f"--keep must be in (0, 1] (shares of the KV entries kept), got {args.keep!r}")
        names = [n for n in args.presses.split(",") if n]
        plist = [parse_press(n, k) for n in names for k in keeps]
    except (ValueError, TypeError) as e:
        return user_error(str(e))
    if args.model and not Path(args.model).exists():
        return user_error(f"model path does not exist: {args.model}")

    import torch
    from tqdm import tqdm

    from ..llm import load_causal_lm
    from .ruler import make_suite
    from .ruler_run import run_suite

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    try:
        model, tok = load_causal_lm(args.model)
        samples = make_suite(tok, args.length, args.samples, tasks, args.data_dir, seed=args.seed)
    except (OSError, ValueError, ModuleNotFoundError) as e:
        return user_error(str(e))
    bar = tqdm(total=len(samples), desc="ruler", disable=args.no_progress)
    on_sample, done = None, []
    if args.out:  # OUT.records.jsonl grows sample by sample: a run cut short keeps what it finished
        partial = Path(args.out).with_suffix(".records.jsonl")
        partial.parent.mkdir(parents=True, exist_ok=True)
        if args.resume and partial.exists():
            done = [json.loads(line) for line in partial.read_text().splitlines() if line]
        else:
            partial.write_text("")

        def on_sample(recs: list[dict]) -> None:
            with partial.open("a") as f:
                f.writelines(json.dumps(r) + "\n" for r in recs)

    skip = {r["sample"] for r in done}
    bar.update(len(skip))
    records = done + run_suite(model, tok, samples, plist, query_aware=args.query_aware, progress=bar,
                               on_sample=on_sample, batch=not args.no_batch, both_modes=args.both_modes, skip=skip)
    bar.close()
    return _report(records, args, f"{args.length} tokens, {args.samples} samples per task")


def _report(records: list[dict], args: argparse.Namespace, what: str) -> int:
    """Print the table; with --out write OUT.json (rows + records), OUT.csv and OUT.png."""
    from .report import format_table, machine_info, write_results
    from .ruler_run import aggregate, columns, plot

    rows = aggregate(records)
    mode = ",".join(sorted({r["mode"] for r in records})) or ("aware" if args.query_aware else "agnostic")
    print(f"\nRULER-style suite: {what}, query-{mode}, score 0-100 (vs_full = average / full cache's)")
    print(format_table(rows, columns(rows)))
    if args.out:
        result = {"meta": {"args": vars(args), "machine": machine_info()}, "rows": rows, "records": records}
        json_path, csv_path = write_results(result, args.out)
        png = plot(rows, Path(args.out).with_suffix(".png"), f"RULER-style, {what}, query-{mode}")
        print(f"wrote {json_path}, {csv_path}, {png}")
    return 0
