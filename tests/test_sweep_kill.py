"""A sweep killed with SIGKILL at random moments, then resumed, stores exactly what an uninterrupted run stores."""

from __future__ import annotations

import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sweep_utils import stored, sweep_config, tiny_model, write_config  # noqa: F401 (fixture)

from tokenreduce.sweep import Store, load_sweep, run_sweep


def _count(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM points").fetchone()[0]
        finally:
            con.close()
    except sqlite3.OperationalError:  # table not created yet
        return 0


def _sweep_cmd(cfg: Path, db: Path) -> list[str]:
    return [sys.executable, "-m", "tokenreduce.cli", "sweep", str(cfg), "--store", str(db), "--no-progress"]


def test_sigkill_at_random_moments_then_resume_equals_uninterrupted(tmp_path, tiny_model):  # noqa: F811
    cfg = write_config(tmp_path / "sweep.yaml", sweep_config(tiny_model))
    sweep = load_sweep(cfg)
    n = len(sweep.points)
    ref_db = tmp_path / "ref.sqlite"
    with Store(ref_db) as s:
        assert len(run_sweep(sweep, s, progress=False).ok) == n
    reference = stored(ref_db)
    assert len(reference) == n and all(r["status"] == "ok" for r in reference.values())

    db = tmp_path / "killed.sqlite"
    rng = random.Random(int(os.environ.get("SWEEP_KILL_SEED", "5")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    kills = 0
    for attempt in range(3):
        before = _count(db)
        proc = subprocess.Popen(_sweep_cmd(cfg, db), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 60
        # wait for this run to store a point (so the kill lands mid-sweep), then a random extra moment
        while proc.poll() is None and _count(db) <= before and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(rng.uniform(0.0, 0.3))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        # what a killed run left behind is consistent: whole rows only, no duplicates
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        partial = stored(db)
        assert set(partial) <= set(reference)
        for k, row in partial.items():
            assert row == reference[k], f"attempt {attempt}: row {row['label']} differs"
    assert kills >= 2, "the sweep finished before it could be killed; make it longer"

    done = subprocess.run(_sweep_cmd(cfg, db), capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert stored(db) == reference
    assert _count(db) == n


# The driver of the many-kills test: the sweep CLI with phase markers and a transaction held open a moment, so
# kills land both while a point is measured and while its row is being committed.
DRIVER = """
import os, random, sys, time
from contextlib import contextmanager
from tokenreduce.sweep import store
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
def phase(name):
    os.pwrite(fd, name.ljust(8).encode(), 0)  # the page cache outlives a SIGKILL
inner = store.Store._tx
@contextmanager
def tx(self):
    phase("commit")
    with inner(self) as c:
        yield c
        time.sleep(random.uniform(0.0, 0.05))  # the row is inserted, not yet committed
    phase("measure")
store.Store._tx = tx
from tokenreduce.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _phase(path: Path) -> str:
    return path.read_text().strip() if path.exists() else ""


def _kill_once(cmd: list[str], db: Path, phase_file: Path, rng: random.Random, env: dict[str, str]) -> str | None:
    """Run the sweep, SIGKILL it mid-commit or mid-measure once it is in its loop; the phase it died in."""
    phase_file.unlink(missing_ok=True)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    want = "commit" if rng.random() < 0.5 else "measure"
    deadline = time.monotonic() + 120
    while proc.poll() is None and _phase(phase_file) != want and time.monotonic() < deadline:
        time.sleep(0.002)
    if want == "measure":
        time.sleep(rng.uniform(0.0, 0.3))
    if proc.poll() is not None:
        return None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return _phase(phase_file)


@pytest.mark.slow
def test_fifty_random_sigkills_lose_and_duplicate_nothing(tmp_path, tiny_model):  # noqa: F811
    """Rounds of random SIGKILLs, each round resumed to completion: the store equals an uninterrupted run's."""
    cfg = write_config(tmp_path / "sweep.yaml", sweep_config(tiny_model))
    sweep = load_sweep(cfg)
    ref_db = tmp_path / "ref.sqlite"
    with Store(ref_db) as s:
        run_sweep(sweep, s, progress=False)
    reference = stored(ref_db)
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)
    rng = random.Random(int(os.environ.get("SWEEP_KILL_SEED", "11")))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    phases: dict[str, int] = {}
    t0, rounds = time.monotonic(), 0
    while sum(phases.values()) < int(os.environ.get("SWEEP_KILLS", "50")):
        rounds += 1
        db, phase_file = tmp_path / f"r{rounds}.sqlite", tmp_path / "phase"
        cmd = [sys.executable, str(driver), str(phase_file), *_sweep_cmd(cfg, db)[3:]]
        for _ in range(5):
            where = _kill_once(cmd, db, phase_file, rng, env)
            if where is None:
                break
            phases[where] = phases.get(where, 0) + 1
        done = subprocess.run(_sweep_cmd(cfg, db), capture_output=True, text=True, env=env, timeout=180)
        assert done.returncode == 0, done.stderr[-2000:]
        assert stored(db) == reference and _count(db) == len(reference), f"round {rounds}"
        with sqlite3.connect(db) as con:
            assert con.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    print(f"\n{sum(phases.values())} SIGKILLs in {rounds} rounds ({phases}), {time.monotonic() - t0:.0f} s")
    assert phases.get("commit", 0) >= 5 and phases.get("measure", 0) >= 5
