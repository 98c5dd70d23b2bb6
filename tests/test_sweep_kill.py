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
