"""``tokenreduce sweep CONFIG.yaml``: run a resumable sweep and print its summary table."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..cli.args import HelpFormatter
from ..cli_errors import user_error
from .config import DEFAULT_STORE, Sweep, load_sweep, missing_models
from .results import query, table
from .runner import BACKENDS, run_sweep
from .store import Store, StoreError, open_existing, warn_if_partial


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        formatter_class=HelpFormatter,
        prog="tokenreduce sweep",
        description="Measure every point of a sweep (models x tasks x methods x parameters). Each finished "
        "point is stored at once; re-running skips stored points, so a killed sweep resumes where it stopped.",
    )
    p.add_argument("config", help="sweep YAML (see examples/sweeps/ and docs/SWEEPS.md)")
    p.add_argument(
        "--store", default=None, help=f"SQLite results file (default: the config's `store`, else {DEFAULT_STORE})"
    )
    p.add_argument("--backend", default="local", choices=BACKENDS, help="local (default) or ray")
    p.add_argument("--address", default=None, help="ray: address of an existing cluster (default: start a local one)")
    p.add_argument("--num-cpus", type=int, default=None, help="ray: CPUs of the local cluster (one point per CPU)")
    p.add_argument("--retry-failed", action="store_true", help="measure stored failed points again")
    p.add_argument("--data-dir", default=None, help="folder with the shared evaluation data (or env TOKENREDUCE_DATA)")
    p.add_argument("--dry-run", action="store_true", help="list the points and which are pending; measure nothing")
    p.add_argument("--no-progress", action="store_true")
    return p


def dry_run(sweep: Sweep, store_path: str) -> int:
    """List the points and their stored status; the store is only read (and not created when missing)."""
    missing = missing_models(sweep)
    if missing:
        raise FileNotFoundError(
            f"model folder(s) not found: {', '.join(missing)} (sweep models load offline: the bundled "
            "all-MiniLM-L6-v2 or a local Hugging Face folder)"
        )
    have: dict[str, str] = {}
    if Path(store_path).exists():
        with open_existing(store_path) as store:
            have = store.statuses()
            warn_if_partial(store)
    for p in sweep.points:
        print(f"{p.key[:12]}  {have.get(p.key, 'pending'):8s} {p.model}  {'+'.join(p.tasks)}  {p.label}")
    todo = sum(p.key not in have for p in sweep.points)
    where = store_path if have or Path(store_path).exists() else f"{store_path} (not created yet)"
    print(f"\n{sweep.name}: {len(sweep.points)} points, {todo} pending -> {where}")
    return 0


def main(argv: list[str] | None = None) -> int:
    a = _parser().parse_args(argv)
    try:
        if a.num_cpus is not None and a.num_cpus < 1:
            raise ValueError(f"--num-cpus must be >= 1, got {a.num_cpus}")
        sweep = load_sweep(a.config)
        store_path = a.store or sweep.store or DEFAULT_STORE
        if a.dry_run:
            return dry_run(sweep, store_path)
        with Store(store_path) as store:
            s = run_sweep(
                sweep,
                store,
                backend=a.backend,
                retry_failed=a.retry_failed,
                progress=not a.no_progress,
                data_dir=a.data_dir,
                ray_address=a.address,
                ray_num_cpus=a.num_cpus,
            )
            keys = {p.key[:12] for p in sweep.points}
            rows = [r for r in query(store) if r["key"] in keys]
            print(table(rows))
            print(
                f"\n{sweep.name}: {s.total} points; {len(s.ok)} measured now, {s.skipped} already stored, "
                f"{len(s.failed)} failed now -> {store.path}"
            )
            if any(r["status"] == "failed" for r in rows):
                print("failed points: see `tokenreduce results --status failed`; re-run with --retry-failed")
            return 1 if s.failed else 0
    except (ValueError, TypeError, FileNotFoundError, StoreError) as e:
        return user_error(e)


if __name__ == "__main__":
    sys.exit(main())
