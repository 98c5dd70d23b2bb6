"""The results store: one SQLite file, one row per finished point, keyed by the point's hash.

Crash safety comes from SQLite itself: WAL journal, ``synchronous=FULL``, and one transaction per
finished point, so a process killed at any moment (SIGKILL included) leaves either the whole row
or none of it. ``key`` is UNIQUE: a finished point can never be stored twice. A successful row is
never overwritten; a failed one is replaced when the point is retried.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .config import Point

SCHEMA = """
CREATE TABLE IF NOT EXISTS points (
    id INTEGER PRIMARY KEY,
    key TEXT NOT NULL UNIQUE,
    sweep TEXT NOT NULL,
    model TEXT NOT NULL,
    tasks TEXT NOT NULL,
    method TEXT NOT NULL,
    label TEXT NOT NULL,
    params TEXT NOT NULL,
    settings TEXT NOT NULL,
    version TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('ok', 'failed')),
    error TEXT,
    metrics TEXT,
    meta TEXT,
    machine TEXT,
    backend TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    wall_s REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 1
);
"""
_JSON_COLS = ("tasks", "params", "settings", "metrics", "meta", "machine")


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Outcome:
    """What measuring one point produced (``metrics is None`` and ``error`` set when it failed)."""

    key: str
    point: Point
    metrics: dict[str, Any] | None
    meta: dict[str, Any] | None
    machine: dict[str, Any] | None
    error: str | None
    started_at: str
    finished_at: str
    wall_s: float

    @property
    def ok(self) -> bool:
        return self.error is None


class Store:
    """A sweep results database (created on first use)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")
        self._conn.executescript(SCHEMA)

    def close(self) -> None:
        self._conn.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield self._conn
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def statuses(self) -> dict[str, str]:
        """key -> 'ok' | 'failed' for every stored point."""
        return dict(self._conn.execute("SELECT key, status FROM points").fetchall())

    def record(self, sweep: str, out: Outcome, backend: str) -> None:
        """Store one finished point in its own transaction (a stored 'ok' row is never replaced)."""
        p = out.point
        ident = p.identity()
        values = {
            "key": out.key,
            "sweep": sweep,
            "model": p.model,
            "tasks": json.dumps(list(p.tasks)),
            "method": p.method,
            "label": p.label,
            "params": json.dumps(p.params, sort_keys=True),
            "settings": json.dumps(p.settings, sort_keys=True),
            "version": ident["version"],
            "status": "ok" if out.ok else "failed",
            "error": out.error,
            "metrics": None if out.metrics is None else json.dumps(out.metrics, sort_keys=True),
            "meta": None if out.meta is None else json.dumps(out.meta, sort_keys=True, default=str),
            "machine": None if out.machine is None else json.dumps(out.machine, sort_keys=True),
            "backend": backend,
            "started_at": out.started_at,
            "finished_at": out.finished_at,
            "wall_s": out.wall_s,
        }
        cols = ", ".join(values)
        marks = ", ".join(f":{k}" for k in values)
        update = ", ".join(f"{k}=excluded.{k}" for k in values if k != "key")
        with self._tx() as c:
            c.execute(
                f"INSERT INTO points ({cols}) VALUES ({marks}) ON CONFLICT(key) DO UPDATE SET {update}, "
                "attempts=points.attempts+1 WHERE points.status='failed'",
                values,
            )

    def rows(self, where: str = "", args: tuple[Any, ...] = ()) -> list[dict[str, Any]]:
        """Stored points as dicts (JSON columns decoded), in insertion order."""
        cur = self._conn.execute(f"SELECT * FROM points {where} ORDER BY id", args)
        names = [d[0] for d in cur.description]
        out = []
        for r in cur.fetchall():
            d = dict(zip(names, r))
            for c in _JSON_COLS:
                if d[c] is not None:
                    d[c] = json.loads(d[c])
            out.append(d)
        return out

    def integrity_ok(self) -> bool:
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def open_existing(path: str | Path) -> Store:
    """Open a store that must already exist (for querying and reports)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no results store at {path} (run `tokenreduce sweep CONFIG.yaml` first)")
    return Store(path)
