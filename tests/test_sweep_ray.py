"""The Ray backend stores the same results as the local one (timings excepted)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest
from test_sweep_utils import stored, sweep_config, tiny_model, write_config  # noqa: F401 (fixture)

from tokenreduce.sweep import Store, parse_sweep, run_sweep
from tokenreduce.sweep.cli import main as sweep_main

METHODS = {"none": {}, "tome": {"keep": [0.8, 0.5]}, "evit": {"keep": 0.5}, "random": {"keep": 0.5}}


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed")
    try:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except Exception as e:  # noqa: BLE001 - any start-up failure means: no Ray here
        pytest.skip(f"a local Ray cluster could not start: {type(e).__name__}: {e}")
    yield ray
    ray.shutdown()


def test_ray_and_local_backends_store_identical_results(tmp_path, tiny_model, ray_cluster):  # noqa: F811
    cfg = sweep_config(tiny_model, methods=METHODS)
    sweep = parse_sweep(cfg)
    with Store(tmp_path / "local.sqlite") as s:
        assert len(run_sweep(sweep, s, progress=False).ok) == len(sweep.points)
    path = write_config(tmp_path / "sweep.yaml", cfg)
    ray_db = tmp_path / "ray.sqlite"
    assert sweep_main([str(path), "--store", str(ray_db), "--backend", "ray", "--no-progress"]) == 0
    local, remote = stored(tmp_path / "local.sqlite"), stored(ray_db)
    assert set(local) == set(remote) and len(local) == len(sweep.points)
    for k in local:
        assert remote[k] == local[k], local[k]["label"]
    with Store(ray_db) as s:
        assert {r["backend"] for r in s.rows()} == {"ray"}
        again = run_sweep(sweep, s, backend="ray", progress=False)  # resume works the same way
    assert again.skipped == len(sweep.points) and not again.ok


def _children() -> dict[int, int]:
    """pid -> parent pid of every process (from /proc)."""
    out = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
            except OSError:
                continue
            out[int(d)] = int(stat.rsplit(")", 1)[1].split()[1])
    return out


def _descendants(pid: int) -> set[int]:
    parents = _children()
    found, todo = set(), [pid]
    while todo:
        p = todo.pop()
        kids = {c for c, pp in parents.items() if pp == p}
        todo += list(kids - found)
        found |= kids
    return found


def _alive(pids: set[int]) -> set[int]:
    return {p for p in pids if os.path.exists(f"/proc/{p}") and "zombie" not in _state(p)}


def _state(pid: int) -> str:
    try:
        return open(f"/proc/{pid}/status").read().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigterm_to_a_ray_driver_shuts_its_cluster_down(tmp_path, tiny_model):  # noqa: F811
    """SIGTERM ends the driver through ray.shutdown(): no Ray process it started (agents included) outlives it."""
    pytest.importorskip("ray", reason="ray is not installed")
    cfg = write_config(tmp_path / "sweep.yaml", sweep_config(tiny_model))
    db = tmp_path / "s.sqlite"
    cmd = [sys.executable, "-m", "tokenreduce.cli", "sweep", str(cfg), "--store", str(db), "--no-progress"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([*cmd, "--backend", "ray", "--num-cpus", "1"], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while proc.poll() is None and not _has_row(db) and time.monotonic() < deadline:
        time.sleep(0.1)
    if proc.poll() is not None:
        pytest.skip(f"the Ray sweep ended early (rc {proc.returncode}): {proc.stderr.read()[-500:]!r}")
    ray_procs = _descendants(proc.pid)
    assert ray_procs, "no Ray processes found"
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM
    deadline = time.monotonic() + 20  # Ray's agents of a driver that just dies linger ~60 s
    while _alive(ray_procs) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not _alive(ray_procs), [open(f"/proc/{p}/cmdline").read()[:80] for p in _alive(ray_procs)]
    assert subprocess.run(cmd, env=env, capture_output=True, timeout=180).returncode == 0  # and it resumes


def _has_row(db) -> bool:
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)
        try:
            return con.execute("SELECT count(*) FROM points").fetchone()[0] > 0
        finally:
            con.close()
    except sqlite3.OperationalError:
        return False
