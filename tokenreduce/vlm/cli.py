"""``tokenreduce bench vlm``: visual-token methods x budgets on a LLaVA-1.5-shaped model (or a local checkpoint).

With ``--model`` pointing at the trained digits VLM (``tokenreduce/assets/vlm_digits``, any folder whose
testbed.json names it) the table is the quality one: held-out accuracy per question type, MACs, time and KV
ratios of every registered image method (random and downsampling baselines always included)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..bench.report import format_table, machine_info
from ..cli.args import HelpFormatter
from ..cli_errors import user_error
from .bench import BEFORE, INSIDE, bench_vlm, llava15_config, processor_inputs, random_llava, synthetic_inputs
from .methods import InsideMethod, make_vlm_method, vlm_methods

QUALITY_COLS = [
    "method",
    "stage",
    "visual_tokens",
    "acc_corner",
    "acc_count",
    "acc_largest",
    "acc_exists",
    "accuracy",
    "agree",
    "macs_ratio",
    "time_ratio",
    "prefill_ms",
    "kv_ratio",
]

COLS = [
    "method",
    "stage",
    "visual_tokens",
    "llm_avg_tokens",
    "macs_ratio",
    "llm7b_macs_ratio",
    "time_ratio",
    "prefill_s",
    "kv_ratio",
    "kl_next",
    "greedy_agree",
]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,prog="tokenreduce bench vlm", description=__doc__)
    p.add_argument(
        "--model",
        help="local LlavaForConditionalGeneration folder (default: LLaVA-1.5-7B layer sizes, "
        "random weights, fewer layers)",
    )
    p.add_argument("--image", help="with --model: an image file (default: random pixels and random prompt ids)")
    p.add_argument("--prompt", default="Describe the image in detail.", help="with --model and --image: the question")
    p.add_argument("--llm-layers", type=int, default=8, help="decoder layers of the random model (7B has 32)")
    p.add_argument("--vision-layers", type=int, default=6, help="vision layers of the random model (CLIP-L has 24)")
    p.add_argument(
        "--methods",
        help=f"comma list of {', '.join(vlm_methods())} (default: {','.join(BEFORE + INSIDE)}; on the digits VLM "
        "every image method)",
    )
    p.add_argument(
        "--tokens", help="visual tokens kept per image (default: 192,128,64 of 576; digits VLM: 64,32,16,8 of 144)"
    )
    p.add_argument("--questions", type=int, default=400, help="digits VLM: held-out questions scored (of 400)")
    p.add_argument("--time-batch", type=int, default=16, help="digits VLM: questions in the timed prefill batch")
    p.add_argument("--repeats", type=int, default=3, help="timed prefills per config (median)")
    p.add_argument("--steps", type=int, default=8, help="greedy tokens compared with the unpruned model")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    p.add_argument("--out", help="write OUT.json (everything) and OUT.csv (the main table)")
    p.add_argument("--json", help=argparse.SUPPRESS)  # former spelling: the JSON file alone
    p.add_argument("--no-progress", action="store_true")
    return p


def check_depth(configs: list, depth: int) -> None:
    """Inside-the-LLM methods prune at given decoder layers: check them against the LLM's depth up front
    (this failed after the first rows were measured, throwing them away)."""
    if depth < 2:
        raise ValueError(f"--llm-layers must be >= 2 (inside-LLM methods prune between layers), got {depth}")
    for cfg in configs:
        if isinstance(cfg, InsideMethod):
            cfg.check(depth)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.model and not args.image and Path(args.model).is_dir():
        from ..bench.vlm_testbed import is_testbed

        if is_testbed(args.model):
            return quality_main(args)
    try:
        tokens = [int(t) for t in (args.tokens or "192,128,64").split(",") if t]
        methods = [m for m in (args.methods or ",".join(BEFORE + INSIDE)).split(",") if m]
        unknown = sorted(set(methods) - set(vlm_methods()))
        if unknown or not tokens or min(tokens) < 1 or args.repeats < 1 or args.steps < 1:
            raise ValueError(f"unknown methods {unknown}" if unknown else "need positive --tokens/--repeats/--steps")
        configs = [make_vlm_method(m, tokens=t) for m in methods for t in tokens]  # every config, before any work
        if not args.model:
            check_depth(configs, args.llm_layers)
    except ValueError as e:
        return user_error(e)
    import torch
    from tqdm import tqdm

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.image and not args.model:
        return user_error("--image needs --model (a checkpoint with its processor)")
    for path, what in ((args.model, "a local model folder"), (args.image, "an image file")):
        if path and not Path(path).exists():
            return user_error(f"{path} is not {what}")
    if args.model:
        from transformers import LlavaForConditionalGeneration

        model = LlavaForConditionalGeneration.from_pretrained(args.model).eval()
        try:
            check_depth(configs, model.config.text_config.num_hidden_layers)
        except ValueError as e:
            return user_error(e)
    else:
        model = random_llava(llava15_config(args.llm_layers, args.vision_layers))
    x = processor_inputs(args.model, args.image, args.prompt) if args.image else synthetic_inputs(model)
    bar = tqdm(total=(1 + len(methods) * len(tokens)) * (args.repeats + 2), disable=args.no_progress, desc="bench vlm")

    def step(label: str) -> None:
        bar.set_postfix_str(label[:40])
        bar.update(1)

    try:
        rows = bench_vlm(model, x, methods, tokens, args.repeats, args.steps, progress=step)
    except ValueError as e:
        return user_error(e)
    finally:
        bar.close()
    info = machine_info()
    n_vis = int((x["input_ids"] == model.config.image_token_id).sum())
    n = x["input_ids"].shape[1]
    print(f"prefill of {n} tokens ({n_vis} visual); {info['cpu']}, {info['torch_threads']} threads")
    print(format_table(rows, COLS))
    _write(args, info, rows)
    return 0


def _write(args: argparse.Namespace, info: dict, rows: list[dict], **extra) -> None:
    if args.json:
        Path(args.json).write_text(json.dumps({"machine": info, **extra, "rows": rows}, indent=2))
    if args.out:
        from ..bench.report import write_results

        write_results({"machine": info, **extra, "rows": rows}, args.out)


def quality_main(args: argparse.Namespace) -> int:
    """The accuracy table on the trained digits VLM (see :mod:`.bench_quality`)."""
    from .bench_quality import bench_quality, configs, table_methods

    try:
        tokens = [int(t) for t in (args.tokens or "64,32,16,8").split(",") if t]
        requested = None if args.methods is None else [m for m in args.methods.split(",") if m]
        unknown = sorted(set(requested or []) - set(vlm_methods()))
        if unknown or not tokens or min(tokens) < 1 or args.repeats < 1 or not 1 <= args.questions:
            raise ValueError(
                f"unknown methods {unknown}" if unknown else "need positive --tokens/--repeats/--questions"
            )
        if args.time_batch < 1:
            raise ValueError("--time-batch must be >= 1")
        cfgs, skipped = configs(table_methods(requested), tokens)
    except ValueError as e:
        return user_error(e)
    import torch
    from tqdm import tqdm

    from ..bench.vlm_testbed import heldout, load_vlm_digits, testbed_info

    if args.threads:
        torch.set_num_threads(args.threads)
    model, tok = load_vlm_digits(args.model)
    examples = heldout(args.questions)
    bar = tqdm(total=len(cfgs) + 1 + args.repeats + 1, disable=args.no_progress, desc="bench vlm (digits)")

    def step(label: str) -> None:
        bar.set_postfix_str(label[:40])
        bar.update(1)

    try:
        rows = bench_quality(model, tok, examples, cfgs, args.repeats, args.time_batch, progress=step)
    finally:
        bar.close()
    info = machine_info()
    skipped += [r for r in rows if "skipped" in r]
    rows = [r for r in rows if "skipped" not in r]
    trained = testbed_info(args.model).get("heldout_accuracy", {}).get("overall")
    print(
        f"digits VLM ({args.model}): {len(examples)} held-out questions, accuracy with all tokens "
        f"{rows[0]['accuracy']:.3f} (recorded at training: {trained}); prefill times: one batch of up to "
        f"{args.time_batch}, median of {args.repeats}; {info['cpu']}, {info['torch_threads']} threads"
    )
    print(format_table(rows, QUALITY_COLS))
    for s in skipped:
        print(f"skipped {s['method']} at {s['visual_tokens']} tokens: {s.get('reason') or s.get('skipped')}")
    _write(args, info, rows, skipped=skipped, questions=len(examples))
    return 0
