"""The results store: one SQLite file, one row per finished point, keyed by the point's hash.

Crash safety comes from SQLite itself: WAL journal, ``synchronous=FULL``, and one transaction per
finished point, so a process killed at any moment (SIGKILL included) leaves either the whole row
or none of it. ``key`` is UNIQUE: a finished point can never be stored twice. A successful row is
never overwritten; a failed one is replaced when the point is retried.

Writers and readers open the file differently. A writer (``Store(path)``) holds an exclusive
``flock`` on ``PATH.lock`` for its lifetime, so a second sweep on the same store is refused at once;
the kernel drops the lock when the process dies (SIGKILL included), so a resume is never blocked.
Readers (:func:`open_existing`) open the file read-only (``mode=ro``, else ``immutable=1``), so a
finished store on read-only media can still be queried. Every SQLite failure while writing (disk
full, read-only file, lock timeout) becomes one :class:`StoreError` naming the path and the cause.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import IO, Any

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


class StoreError(RuntimeError):
    """The results store cannot be written or read (disk full, read-only media, another sweep holds it, ...)."""


class StoreBusyError(StoreError):
    """Another live process is writing this store."""


_HINTS = {
    "disk is full": "free some space and re-run: stored points are kept and the sweep resumes",
    "readonly": "the file or its folder is read-only; give --store on writable media "
    "(`tokenreduce results` and `report` can still read it)",
    "unable to open": "the file or its folder is not writable, or the folder is missing",
    "locked": "another process held the database for over 60 s",
}


def write_error(path: Path, err: BaseException) -> StoreError:
    """One line naming the store, SQLite's (or the OS's) cause and what to do about it."""
    cause = str(err) or type(err).__name__
    hint = next((h for k, h in _HINTS.items() if k in cause.lower()), "")
    if not hint and isinstance(err, PermissionError):
        hint = _HINTS["readonly"]
    return StoreError(f"cannot write the results store {path}: {cause}" + (f" ({hint})" if hint else ""))


def _wal(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def _take_lock(path: Path) -> IO[str] | None:
    """Hold an exclusive ``flock`` on ``PATH.lock`` (or refuse): one writing sweep per store.

    The kernel releases it when the process exits or is killed, so no stale lock survives a crash.
    Without ``fcntl`` (Windows) there is no lock and two sweeps on one store would both measure.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    f = open(lock_path(path), "a+")  # noqa: SIM115 - held open for the Store's lifetime
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.seek(0)
        holder = f.read().strip() or "unknown"
        f.close()
        raise StoreBusyError(
            f"results store {path} is in use by another sweep (pid {holder}); wait for it to finish, "
            "or give another --store"
        ) from None
    f.seek(0)
    f.truncate()
    f.write(f"{os.getpid()}\n")
    f.flush()
    return f


def _open_readonly(path: Path) -> tuple[sqlite3.Connection, bool]:
    """(connection, immutable), creating no file beside the store.

    Without a ``-wal`` file no writer is connected (a WAL writer keeps one while open) and the main
    file holds every row: ``immutable=1`` reads it and creates nothing. With one, ``mode=ro`` sees a
    running or killed sweep's committed rows, but needs a ``-shm`` file, which a read-only folder
    cannot hold; then ``immutable=1`` reads the main file alone (see :meth:`Store.unseen_wal`).
    """
    uri = path.resolve().as_uri()
    last: sqlite3.Error | None = None
    modes = [("mode=ro", False), ("immutable=1", True)] if _wal(path).exists() else [("immutable=1", True)]
    for query, immutable in modes:
        conn = None
        try:
            conn = sqlite3.connect(f"{uri}?{query}", uri=True, timeout=60, isolation_level=None)
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        except sqlite3.OperationalError as e:
            last = e
            if conn is not None:
                conn.close()
            continue
        except sqlite3.DatabaseError as e:  # "file is not a database", ...
            raise ValueError(f"{path} is not a sweep results store (not an SQLite database: {e})") from None
        if "points" not in tables:
            conn.close()
            raise ValueError(f"{path} is an SQLite database but not a sweep results store (no `points` table)")
        return conn, immutable
    raise StoreError(f"cannot read the results store {path}: {last}")


class Store:
    """A sweep results database: created and locked on first use, or opened read-only (``readonly=True``)."""

    def __init__(self, path: str | Path, readonly: bool = False):
        self.path = Path(path)
        self.readonly = readonly
        self.immutable = False  # read through ``immutable=1``: a leftover -wal file is not seen
        self._lock: IO[str] | None = None
        if readonly:
            self._conn, self.immutable = _open_readonly(self.path)
            return
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock = _take_lock(self.path)
            self._conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.executescript(SCHEMA)
        except StoreError:
            raise
        except (OSError, sqlite3.OperationalError) as e:
            self._release()
            raise write_error(self.path, e) from e

    def _release(self) -> None:
        if self._lock is not None:
            self._lock.close()  # closing the file drops the flock
            self._lock = None

    def unseen_wal(self) -> bool:
        """True when read with ``immutable=1`` beside a non-empty ``-wal`` (rows of a killed sweep missing)."""
        wal = _wal(self.path)
        return self.immutable and wal.is_file() and wal.stat().st_size > 0

    def close(self) -> None:
        if hasattr(self, "_conn"):
            self._conn.close()
        self._release()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """One write transaction; any SQLite failure rolls it back and becomes a :class:`StoreError`."""
        try:
            self._conn.execute("BEGIN IMMEDIATE")
            yield self._conn
            self._conn.execute("COMMIT")
        except BaseException as e:
            if self._conn.in_transaction:
                try:
                    self._conn.execute("ROLLBACK")
                except sqlite3.Error:
                    pass  # SQLite rolls back itself when it cannot; the committed rows stay
            if isinstance(e, sqlite3.OperationalError):
                raise write_error(self.path, e) from e
            raise

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


def warn_if_partial(store: Store) -> None:
    """Tell the user (stderr) when rows of a killed, never-resumed sweep sit in a -wal file we could not read."""
    if store.unseen_wal():
        print(
            f"tokenreduce: warning: {store.path} was read without its -wal file (read-only folder); points a killed "
            "sweep committed there are not shown until a sweep on writable media resumes it",
            file=sys.stderr,
        )


def open_existing(path: str | Path) -> Store:
    """Open a store that must already exist, read-only (for queries, reports and dry runs)."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"no results store at {path} (run `tokenreduce sweep CONFIG.yaml` first)")
    return Store(path, readonly=True)
