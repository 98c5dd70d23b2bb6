"""``tokenreduce bench kv``: presses x keep fractions on a causal LM (SmolLM2-135M-Instruct by default)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..bench.report import format_table, machine_info
from ..cli.args import HelpFormatter
from ..cli_errors import user_error
from .bench import gemfilter_row, quality_rows, speed_rows
from .data import PASSKEY_PROMPT, PASSKEY_QUESTION, haystack, passkeys, windows
from .presses.base import label, parse_press, presses

DEFAULT_PRESSES = ("streaming_llm,snapkv,snapkv:kernel=11,tova,h2o,keyformer,key_norm,adakv,adakv:kernel=11,"
                   "adakv:window=256:kernel=1,pyramidkv,zipcache:keep=1.0:bits=8,zipcache:keep=1.0:bits=4,"
                   "zipcache:keep=1.0:bits=4:salient=0.0,zipcache,kvzip,kvzip:window=256:sinks=4:recent=128:min_share=0.0")
QUALITY_COLS = ["press", "keep", "kv_bytes_ratio", "kl_mean", "ppl", "passkey_agnostic", "passkey_aware"]
SPEED_COLS = ["press", "keep", "tokens", "kv_bytes_ratio", "decode_ms_per_token_full", "decode_ms_per_token",
              "decode_time_ratio", "decode_peak_ratio", "prefill_peak_ratio"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,prog="tokenreduce bench kv", description=__doc__)
    p.add_argument("--model", help="local HF model folder or .gguf file (default: SmolLM2-135M-Instruct)")
    p.add_argument("--data-dir", help="shared data dir with needle_haystack_paul_graham/ (default: auto, else "
                                      "Python's own docs)")
    p.add_argument("--no-data", action="store_true", help="use Python's docs even if the shared data is found")
    p.add_argument("--presses", default=DEFAULT_PRESSES, help=f"comma list of name or name:param=value:... "
                                                              f"(a keep=... there overrides --keep; random is "
                                                              f"always added); available: {','.join(presses())}")
    p.add_argument("--keep", default="0.25", help="comma list of kept fractions in (0, 1]")
    p.add_argument("--samples", type=int, default=8, help="continuation (KL/ppl) samples")
    p.add_argument("--passkey-samples", type=int, default=8)
    p.add_argument("--passkey-prompt", default=PASSKEY_PROMPT,
                   help="text fed after the passkey context (default: the answer prefix alone, as kvpress; "
                        f"{PASSKEY_QUESTION!r} is the question form)")
    p.add_argument("--length", type=int, default=2000, help="context tokens")
    p.add_argument("--cont", type=int, default=64, help="teacher-forced continuation tokens")
    p.add_argument("--timing", action="store_true", help="also decode time / peak memory vs the full cache")
    p.add_argument("--gemfilter", action="store_true", help="also GemFilter prefill time/memory vs full prefill")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="write OUT.json (everything) and OUT.csv (the main table)")
    p.add_argument("--json", help=argparse.SUPPRESS)  # former spelling: the JSON file alone
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        keeps = [float(k) for k in args.keep.split(",") if k]
        bad = [k for k in keeps if not 0.0 < k <= 1.0]
        if bad or not keeps:
            raise ValueError(f"--keep must be in (0, 1] (shares of the KV entries kept), got {args.keep!r}")
        names = ["random", *[n for n in args.presses.split(",") if n and n != "random"]]
        plist = list({(label(p), p.keep): p for k in keeps for p in (parse_press(n, k) for n in names)}.values())
    except (ValueError, TypeError) as e:
        return user_error(str(e))
    if args.length < 128 or args.cont < 2 or args.samples < 0 or args.passkey_samples < 0:
        return user_error("need --length >= 128, --cont >= 2 and non-negative sample counts")
    data_dir = args.data_dir
    if data_dir is None and not args.no_data:
        from ..bench.tasks import default_data_dir

        found = default_data_dir()
        if found is not None and (found / "needle_haystack_paul_graham").is_dir():
            data_dir = found
    if args.model and not Path(args.model).exists():
        return user_error(f"model path does not exist: {args.model}")

    import torch
    from tqdm import tqdm

    from ..llm import load_causal_lm

    try:
        text, source = haystack(data_dir)
        model, tok = load_causal_lm(args.model)
        samples = windows(tok, text, args.samples, args.length, args.cont, seed=args.seed)
        needles = passkeys(tok, text, args.passkey_samples, args.length, seed=args.seed + 1,
                           prompt=args.passkey_prompt.replace('\\n', '\n'))
    except (OSError, ValueError, ModuleNotFoundError) as e:
        return user_error(str(e))
    bar = tqdm(total=len(samples) + len(needles), desc="kv quality", disable=args.no_progress)
    with torch.no_grad():
        rows = quality_rows(model, tok, samples, needles, plist, progress=bar)
    bar.close()
    print(f"\nquality ({source}, {args.length}-token contexts, {args.samples} continuation samples of "
          f"{args.cont} tokens, {args.passkey_samples} passkey samples)")
    print(format_table(rows, QUALITY_COLS))
    out = {"quality": rows, "source": source, "args": vars(args), "machine": machine_info()}
    if args.timing:
        ids = (samples or needles)[0].context
        fixed = {label(parse_press(n, keeps[0])) for n in names if ":keep=" in f":{n}"}  # keep set in the spec
        speed = speed_rows(model, ids, [p for p in plist if p.keep == keeps[0] or label(p) in fixed], tokenizer=tok)
        print(f"\nspeed/memory vs full cache, same process ({ids.shape[1]} tokens, decode 16 tokens, interleaved)")
        print(format_table(speed, SPEED_COLS))
        out["speed"] = speed
    if args.gemfilter:
        ids = (samples or needles)[0].context
        gem = [gemfilter_row(model, ids, k) for k in keeps]
        print(f"\nGemFilter vs full prefill, same process ({ids.shape[1]} tokens, interleaved medians)")
        print(format_table(gem, ["press", "keep", "tokens", "prefill_s_full", "prefill_s", "prefill_time_ratio",
                                 "prefill_peak_ratio"]))
        out["gemfilter"] = gem
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    if args.out:
        from ..bench.report import write_results

        paths = write_results({**out, "rows": rows}, args.out)
        print("wrote " + " and ".join(map(str, paths)))
    return 0
