"""``tokenreduce results``: list and filter stored sweep points; export them as CSV or Parquet."""

from __future__ import annotations

import argparse
import sys

from ..cli.args import HelpFormatter
from ..cli_errors import user_error
from .config import DEFAULT_STORE
from .results import parse_where, query, table, write_csv, write_parquet
from .store import StoreError, open_existing, warn_if_partial


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,prog="tokenreduce results", description="List, filter and export stored points.")
    p.add_argument("store", nargs="?", default=DEFAULT_STORE, help=f"SQLite results file (default {DEFAULT_STORE})")
    p.add_argument("--sweep", default=None, help="only this sweep's points")
    p.add_argument("--method", default=None)
    p.add_argument("--model", default=None)
    p.add_argument("--status", default=None, choices=["ok", "failed"])
    p.add_argument(
        "--where",
        action="append",
        default=[],
        metavar="COLUMN=VALUE",
        help="filter on any column, e.g. param:keep=0.5 (repeatable; numbers compare numerically)",
    )
    p.add_argument("--columns", default=None, help="comma-separated columns to print (default: a summary)")
    p.add_argument("--errors", action="store_true", help="print the full error text of failed points")
    p.add_argument("--csv", default=None, metavar="PATH", help="write the matching rows (all columns) as CSV")
    p.add_argument("--parquet", default=None, metavar="PATH", help="write them as Parquet (needs pyarrow)")
    return p


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        where = parse_where(a.where)
        for col in ("sweep", "method", "model", "status"):
            if getattr(a, col) is not None:
                where[col] = getattr(a, col)
        with open_existing(a.store) as store:
            warn_if_partial(store)
            rows = query(store, where)
            errors = {r["key"][:12]: r["error"] for r in store.rows() if r["error"]} if a.errors else {}
        cols = [c.strip() for c in a.columns.split(",") if c.strip()] if a.columns else None
        if rows:
            print(table(rows, cols))
        print(f"\n{len(rows)} point(s)")
        for r in rows:
            if r["key"] in errors:
                print(f"\n--- {r['key']} {r['label']}\n{errors[r['key']]}")
        if a.csv:
            print(f"wrote {write_csv(rows, a.csv)}")
        if a.parquet:
            print(f"wrote {write_parquet(rows, a.parquet)}")
        return 0
    except (ValueError, TypeError, FileNotFoundError, StoreError) as e:
        return user_error(e)


if __name__ == "__main__":
    sys.exit(main())
