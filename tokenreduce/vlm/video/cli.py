"""``tokenreduce bench video``: video methods x kept shares on a Qwen2.5-VL-7B-shaped model (random weights,
fewer LLM layers, vision tower not run), then the streaming session's held tokens and memory over many frames.

With ``--model`` pointing at the trained moving-digits video model (``tokenreduce/assets/video_digits``, any
folder whose testbed.json names it) the table is the quality one: held-out accuracy per question type, prefill
MACs (measured, and the LLM's analytic), time and KV ratios of every video method and staged row, the baselines
(frame subsampling, pooling per frame, random) always included."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ...bench.report import format_table, machine_info
from ...cli.args import HelpFormatter
from ...cli_errors import user_error
from ..methods import make_vlm_method, vlm_methods
from .methods import VIDEO_METHODS

COLS = ["method", "keep", "visual_tokens", "macs_ratio", "llm28_macs_ratio", "time_ratio", "prefill_s", "spread_s",
        "reduce_s", "time28_ratio_est", "kv_mb_28l_bf16", "decode_read_ratio"]
STAGED = ("dycoke+kv", "holitom+llm", "prunevid+kv")  # bench.STAGED's names (bench imports torch)
STREAM_COLS = ["frame", "held", "unreduced_tokens", "prefill_s", "peak_rss_mb"]
QUALITY_COLS = ["method", "keep", "visual_tokens", "acc*", "accuracy", "agree", "macs_ratio", "llm_macs_ratio",
                "time_ratio", "prefill_ms", "kv_bytes", "kv_ratio", "decode_read_ratio"]  # acc*: one per type


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(formatter_class=HelpFormatter, prog="tokenreduce bench video", description=__doc__)
    p.add_argument("--model", help="the trained video testbed (tokenreduce/assets/video_digits): the accuracy "
                   "table on its held-out questions instead (the random-model and streaming options are unused)")
    p.add_argument("--questions", type=int, default=400, help="with --model: held-out questions scored")
    p.add_argument("--time-batch", type=int, default=8, help="with --model: questions in the timed prefill batch")
    p.add_argument("--frames", type=int, default=16, help="temporal token groups (Qwen2.5-VL: 2 raw frames each)")
    p.add_argument("--grid", type=int, default=14, help="LLM tokens per frame side (14: 196 tokens, 392x392 input)")
    p.add_argument("--llm-layers", type=int, default=1, help="decoder layers built (Qwen2.5-VL-7B has 28)")
    p.add_argument("--methods", help="comma list of video methods, and of the LLM stages' rows " + ", ".join(STAGED)
                   + " (default: all; the stages' rows need --llm-layers >= 2)")
    p.add_argument("--keep", default="0.1,0.25,0.5", help="shares of the visual tokens kept")
    p.add_argument("--repeats", type=int, default=3, help="timed prefills per config, round-robin (median)")
    p.add_argument("--no-count", action="store_true", help="skip FlopCounterMode (MACs from the formula)")
    p.add_argument("--stream-frames", type=int, default=256, help="frames fed to the streaming session (0: skip)")
    p.add_argument("--budget", type=int, default=1024, help="visual tokens the streaming session may hold")
    p.add_argument("--recent", type=int, default=2, help="newest frames the session keeps whole")
    p.add_argument("--old", type=float, default=0.25, help="share of a frame kept once merged")
    p.add_argument("--checkpoints", default="1,8,32,64,128,192,256", help="frames after which the stream answers")
    p.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"], help="weights and activations")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--out", help="write OUT.json (everything) and OUT.csv (the main table)")
    p.add_argument("--json", help=argparse.SUPPRESS)  # former spelling: the JSON file alone
    p.add_argument("--no-progress", action="store_true")
    return p


def methods_and_keeps(args: argparse.Namespace, depth: int | None) -> tuple[list[str] | None, list[float]]:
    """The requested methods (None: the default set) and kept shares, every config built once to check it
    before any work; ``depth``: the LLM's layers when known (stages need >= 2)."""
    methods = None if args.methods is None else [m for m in args.methods.split(",") if m]
    bad = sorted(set(methods or ()) - set(VIDEO_METHODS) - set(STAGED))
    if bad:
        others = sorted(set(vlm_methods()) - set(VIDEO_METHODS))
        raise ValueError(f"not video methods: {bad}; video methods: {', '.join(VIDEO_METHODS + STAGED)}"
                         + (f" (image methods: {', '.join(others)})" if set(bad) & set(others) else ""))
    if depth is not None and depth < 2 and set(methods or ()) & set(STAGED):
        raise ValueError(f"{', '.join(sorted(set(methods or ()) & set(STAGED)))}: a stage inside the LLM needs "
                         f">= 2 LLM layers, the model has {depth} (--llm-layers sets the random model's)")
    try:
        keeps = [float(k) for k in args.keep.split(",") if k]
    except ValueError:
        raise ValueError(f"--keep takes shares in (0, 1] separated by commas, got {args.keep!r}") from None
    if not keeps:
        raise ValueError("--keep needs at least one share in (0, 1]")
    for m in methods or VIDEO_METHODS:
        for k in keeps:
            make_vlm_method(m.split("+")[0], keep=k)  # every config checked before any work
    return methods, keeps


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.model:
        return quality_main(args)
    try:
        requested, keeps = methods_and_keeps(args, args.llm_layers)
        methods = requested or [*VIDEO_METHODS, *(STAGED if args.llm_layers >= 2 else ())]
        checkpoints = tuple(int(c) for c in args.checkpoints.split(",") if c)
        if min(args.frames, args.grid, args.llm_layers, args.repeats) < 1 or args.stream_frames < 0:
            raise ValueError("--frames, --grid, --llm-layers and --repeats must be >= 1, --stream-frames >= 0")
    except ValueError as e:
        return user_error(e)
    import torch
    from tqdm import tqdm

    from . import bench

    if args.threads:
        torch.set_num_threads(args.threads)
    model = bench.qwen25_7b(args.llm_layers, dtype=getattr(torch, args.dtype))
    x = bench.video_prompt(model, args.frames, (args.grid, args.grid))
    total = (1 + len(methods) * len(keeps)) * (args.repeats + 1) + len(checkpoints)
    bar = tqdm(total=total, disable=args.no_progress, desc="bench video")

    def step(label: str) -> None:
        bar.set_postfix_str(label[:40])
        bar.update(1)

    try:
        rows = bench.bench_video(model, x, methods, keeps, args.repeats, progress=step, count=not args.no_count)
        stream = None
        if args.stream_frames:
            stream = bench.bench_stream(model, args.stream_frames, (args.grid, args.grid), args.budget, args.recent,
                                        args.old, checkpoints, progress=step)
    except ValueError as e:
        return user_error(e)
    finally:
        bar.close()
    info = machine_info()
    n = x["input_ids"].shape[1]
    print(f"prefill of {n} tokens ({args.frames} x {args.grid * args.grid} visual), {args.llm_layers} LLM layer(s) "
          f"of Qwen2.5-VL-7B's widths, {args.dtype}; {info['cpu']}, {info['torch_threads']} threads")
    print(format_table(rows, COLS))
    if stream is not None:
        print(f"\nstreaming: budget {args.budget}, recent {args.recent}, old {args.old}; held after every 16th frame:")
        print(" ".join(str(h) for h in stream["held"][15::16]))
        print(format_table(stream["answers"], STREAM_COLS))
    result = {"machine": info, "rows": rows, "stream": stream, "args": vars(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    if args.out:
        from ...bench.report import write_results

        print("wrote " + " and ".join(map(str, write_results(result, args.out))))
    return 0


def quality_main(args: argparse.Namespace) -> int:
    """The accuracy table on the trained moving-digits video model (see :mod:`.bench_quality`)."""
    from ...bench import video_testbed

    try:
        if not Path(args.model).is_dir() or not video_testbed.is_testbed(args.model):
            raise ValueError(f"--model {args.model} is not the trained video testbed (a folder whose testbed.json "
                             f"names it, e.g. {video_testbed.ASSET_DIR}; scripts/train_video_digits.py writes one); "
                             "leave --model out for the Qwen2.5-VL-7B-shaped random model")
        requested, keeps = methods_and_keeps(args, None)
        if min(args.repeats, args.questions, args.time_batch) < 1:
            raise ValueError("--repeats, --questions and --time-batch must be >= 1")
    except ValueError as e:
        return user_error(e)
    import torch
    from tqdm import tqdm

    from .bench_quality import bench_video_quality, configs, table_methods

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = video_testbed.load_video_digits(args.model)
    depth = model.config.text_config.num_hidden_layers
    try:
        methods_and_keeps(args, depth)
        cfgs, names = configs(table_methods(requested, depth), keeps, depth)
    except ValueError as e:
        return user_error(e)
    examples = video_testbed.heldout(args.questions)
    bar = tqdm(total=len(cfgs) + 1 + args.repeats + 1, disable=args.no_progress, desc="bench video (digits)")

    def step(label: str) -> None:
        bar.set_postfix_str(label[:40])
        bar.update(1)

    try:
        rows = bench_video_quality(model, tok, examples, cfgs, names, video_testbed, args.repeats, args.time_batch,
                                   progress=step)
    finally:
        bar.close()
    info = machine_info()
    skipped = [r for r in rows if "skipped" in r]
    rows = [r for r in rows if "skipped" not in r]
    trained = video_testbed.testbed_info(args.model).get("heldout_accuracy")
    trained = trained.get("overall") if isinstance(trained, dict) else trained
    print(f"video digits model ({args.model}): {len(examples)} held-out questions, accuracy with all tokens "
          f"{rows[0]['accuracy']:.3f} (recorded at training: {trained}); prefill times: one batch of up to "
          f"{args.time_batch}, median of {args.repeats}; {info['cpu']}, {info['torch_threads']} threads")
    acc = [f"acc_{q}" for q in video_testbed.QTYPES]
    cols = [c for col in QUALITY_COLS for c in (acc if col == "acc*" else [col])]
    print(format_table(rows, cols))
    for s in skipped:
        print(f"skipped {s['method']} at keep {s['keep']}: {s['skipped']}")
    result = {"machine": info, "rows": rows, "skipped": skipped, "questions": len(examples), "args": vars(args)}
    if args.out:
        from ...bench.report import write_results

        print("wrote " + " and ".join(map(str, write_results(result, args.out))))
    return 0
