"""``tokenreduce compress FILE``: print the compressed context and its stats (stats go to stderr).

tokenreduce compress notes.txt --question "When is the launch?" --rate 0.25
tokenreduce compress chat.txt --target-tokens 500 --method perplexity --html kept.html
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..cli.args import HelpFormatter
from ..cli_errors import user_error
from .compress import DEFAULT_PROTECT
from .methods import prompt_methods
from .protect import STRUCTURE_KINDS


def _kinds(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,prog="tokenreduce compress", description="Compress a prompt / context file.")
    p.add_argument("file", help="text file to compress ('-' for stdin)")
    p.add_argument("--question", default=None, help="question for question-aware methods")
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--rate", type=float, help="fraction of tokens to keep, in (0, 1]; 0.25 = 4x")
    g.add_argument("--target-tokens", type=int, help="absolute token budget")
    p.add_argument("--method", default="extractive", help=f"one of: {', '.join(prompt_methods())}")
    p.add_argument("--model", default=None, help="local model folder for the method (default: its built-in one)")
    p.add_argument(
        "--tokenizer",
        default=None,
        help="budget tokenizer: tiktoken name or local HF folder (default cl100k_base if available)",
    )
    p.add_argument(
        "--data-dir",
        default=None,
        help="shared data folder; its tokenizers/tiktoken holds the tiktoken files (default: found automatically)",
    )
    p.add_argument(
        "--protect",
        type=_kinds,
        default=list(DEFAULT_PROTECT),
        help=f"structure kinds never cut (comma-separated from {', '.join(STRUCTURE_KINDS)}; '' for none)",
    )
    p.add_argument("--force", type=_kinds, default=[], help="structure kinds always kept")
    p.add_argument("--keep", action="append", default=[], help="literal text that must be kept (repeatable)")
    p.add_argument(
        "--granularity",
        choices=["sentence", "token"],
        default=None,
        help="sentence: keep whole sentences; token: trim at word level (default: the method's own)",
    )
    p.add_argument("--documents", action="store_true", help="treat blank-line separated blocks as documents")
    p.add_argument("--html", default=None, help="write a page highlighting what was kept")
    p.add_argument("--json", action="store_true", help="print stats as JSON")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        text = sys.stdin.read() if a.file == "-" else Path(a.file).read_text(encoding="utf-8")
        from . import compress_prompt
        from .bench_setup import tiktoken_dir

        params = {"model": a.model} if a.model else {}
        res = compress_prompt(
            text,
            a.question,
            rate=a.rate,
            target_tokens=a.target_tokens,
            method=a.method,
            tokenizer=a.tokenizer,
            protect=a.protect,
            force=a.force,
            keep=a.keep,
            tiktoken_dir=tiktoken_dir(a.data_dir),
            granularity=a.granularity,
            **params,
        )
    except (ValueError, TypeError, FileNotFoundError, UnicodeDecodeError) as e:
        return user_error(e)
    print(res.text)
    stats = res.stats()
    if a.json:
        print(json.dumps(stats), file=sys.stderr)
    else:
        print(
            f"\n[{stats['method']}] {stats['original_tokens']} -> {stats['compressed_tokens']} tokens "
            f"(target {stats['target_tokens']}, {stats['granularity']} granularity, "
            f"target {stats['target_ratio']}x, achieved {stats['ratio']}x, tokenizer {stats['tokenizer']})"
            + (" OVER BUDGET: forced spans alone exceed the target" if res.over_budget else "")
            + (" (no whole sentence fitted: the best one was trimmed)" if res.sentence_cut else ""),
            file=sys.stderr,
        )
    if a.html:
        from .html import render_html

        Path(a.html).write_text(render_html(res, a.question), encoding="utf-8")
        print(f"wrote {a.html}", file=sys.stderr)
    return 0
