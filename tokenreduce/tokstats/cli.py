"""``tokenreduce tokenizers``: fertility, bytes/token, parity, vocabulary audit and cost, with a PNG chart.

    tokenreduce tokenizers                                  # all known tokenizers, 20 languages, devtest
    tokenreduce tokenizers --tokenizers cl100k_base,o200k_base,llama2 --langs eng_Latn,hin_Deva \\
        --price cl100k_base=2.5 --price o200k_base=2.5 --png parity.png --out tokstats
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..bench.report import format_table, write_results
from ..cli.args import HelpFormatter
from ..cli_errors import user_error
from .load import KNOWN, load_tok
from .report import DEFAULT_LANGS, analyse, flores_lines, plot_parity


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _price(text: str) -> tuple[str, float]:
    name, sep, val = text.partition("=")
    try:
        if not sep:
            raise ValueError
        return name.strip(), float(val)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected TOKENIZER=USD_PER_MILLION_TOKENS, got {text!r}") from e


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="tokenreduce tokenizers",
        description="Tokenizer efficiency on FLORES-200 parallel text: fertility (tokens/word), bytes/token, "
        "parity (token premium vs a reference language), vocabulary audit, cost per request.",
    )
    p.add_argument("--tokenizers", type=_names, default=list(KNOWN), help=f"names ({', '.join(KNOWN)}) or local paths")
    p.add_argument("--langs", type=_names, default=list(DEFAULT_LANGS), help="FLORES-200 codes, e.g. eng_Latn,hin_Deva")
    p.add_argument("--reference", default="eng_Latn", help="parity reference language (default eng_Latn)")
    p.add_argument("--split", default="devtest", choices=["dev", "devtest"])
    p.add_argument("--lines", type=int, default=None, help="use only the first N sentences per language")
    p.add_argument(
        "--price",
        type=_price,
        action="append",
        default=[],
        metavar="TOK=USD_PER_1M",
        help="input price in USD per million tokens for a tokenizer (repeatable)",
    )
    p.add_argument("--request-lines", type=int, default=20, help="sentences per request for the cost table")
    p.add_argument("--data-dir", default=None, help="shared data folder (default: found automatically)")
    p.add_argument("--png", default=None, help="write the parity bar chart here")
    p.add_argument("--out", default=None, help="write OUT.json / OUT.csv with all rows")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    a = parser().parse_args(argv)
    try:
        from ..bench.tasks import default_data_dir

        data = Path(a.data_dir) if a.data_dir else default_data_dir()
        if data is None:
            raise FileNotFoundError("no shared data folder found: pass --data-dir")
        langs = list(dict.fromkeys([a.reference, *a.langs]))
        if a.lines is not None and a.lines < 1:
            raise ValueError("--lines must be >= 1")
        texts = {lang: flores_lines(data, lang, a.split)[: a.lines] for lang in langs}
        toks = [load_tok(t, data) for t in a.tokenizers]
        unknown = [t for t, _ in a.price if t not in {tok.name for tok in toks}]
        if unknown:
            raise ValueError(f"--price names tokenizer(s) not analysed: {unknown}")
    except (ValueError, FileNotFoundError) as e:
        return user_error(e)
    from tqdm import tqdm

    bar = tqdm(total=len(toks) * len(langs), desc="tokenizing", disable=a.no_progress, file=sys.stderr)
    res = analyse(toks, texts, a.reference, dict(a.price), a.request_lines, on_step=bar.update)
    bar.close()
    print(
        format_table(
            res["languages"], ["tokenizer", "lang", "tokens", "fertility", "bytes_per_token", "unk_share", "parity"]
        )
    )
    vcols = ["tokenizer", "vocab", "byte_tokens", "word_initial", "word_internal"]
    scripts = sorted({k for r in res["vocab"] for k, v in r.items() if k.startswith("script:") and v >= 0.01})
    print()
    print(format_table(res["vocab"], vcols + scripts))
    if res["cost"]:
        print(f"\ncost per request of {a.request_lines} sentences:")
        print(format_table(res["cost"], ["tokenizer", "lang", "tokens_per_request", "usd_per_1k_requests", "premium"]))
    print(
        f"\nFLORES-200 {a.split}, {len(texts[a.reference])} parallel sentences per language; "
        "fertility = tokens / whitespace word (not meaningful for zho/jpn/tha); shares of vocabulary entries"
    )
    if a.png:
        print(f"wrote {plot_parity(res['languages'], a.png, a.reference)}")
    if a.out:
        rows = [dict(r, table=k) for k, v in res.items() for r in v]
        j, c = write_results({"meta": {"split": a.split, "reference": a.reference}, "rows": rows}, a.out)
        print(f"wrote {j} and {c}")
    return 0
