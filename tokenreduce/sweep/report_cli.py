"""``tokenreduce report``: a self-contained HTML report and PNG plots of stored sweep results."""

from __future__ import annotations

import argparse
import sys

from ..cli.args import HelpFormatter
from ..cli_errors import user_error
from .config import DEFAULT_STORE
from .report import write_report
from .store import StoreError, open_existing, warn_if_partial


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="tokenreduce report",
        description="Write OUT/index.html (interactive accuracy-vs-MACs and accuracy-vs-latency plots, Pareto fronts, "
        "per-method tables, machine and versions; no network needed to view it) and the plots as PNG.",
    )
    p.add_argument("store", nargs="?", default=DEFAULT_STORE, help=f"SQLite results file (default {DEFAULT_STORE})")
    p.add_argument("--out", default="report", help="output folder (default ./report)")
    p.add_argument("--sweep", default=None, help="only this sweep's points (default: all in the store)")
    p.add_argument("--title", default=None)
    p.add_argument("--note", default="", help="a remark shown at the top, e.g. how the machine was loaded")
    p.add_argument("--no-png", action="store_true", help="HTML only (no matplotlib needed)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        with open_existing(a.store) as store:
            warn_if_partial(store)
            paths = write_report(store, a.out, sweep=a.sweep, title=a.title, note=a.note, png=not a.no_png)
        for p in paths:
            print(f"wrote {p}")
        return 0
    except (ValueError, TypeError, FileNotFoundError, StoreError) as e:
        return user_error(e)


if __name__ == "__main__":
    sys.exit(main())
