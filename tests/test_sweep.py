"""Sweep config expansion and validation, the store's resume/retry semantics, results queries and the CLIs."""

from __future__ import annotations

import csv
import sqlite3

import pytest
from test_sweep_utils import make_tiny_model, stored, sweep_config, tiny_model, write_config  # noqa: F401

import tokenreduce
from tokenreduce.sweep import Store, parse_sweep, pending, run_sweep
from tokenreduce.sweep.cli import main as sweep_main
from tokenreduce.sweep.config import Point
from tokenreduce.sweep.results import parse_where, query, write_csv, write_parquet
from tokenreduce.sweep.results_cli import main as results_main
from tokenreduce.sweep.store import Outcome


def _cfg(**kw):
    return {"tasks": ["stdlib-code:8"], "methods": ["tome"], "params": {"keep": [0.9, 0.5]}, **kw}


def test_grid_expansion_order_and_dedup():
    s = parse_sweep(
        {
            "models": ["a", "b"],
            "tasks": ["stdlib-code:8", ["stdlib-code:8", "nq:5"]],
            "methods": {"tome": {"keep": [0.9, 0.5], "schedule": ["constant", "decreasing"]}, "none": {}},
            "points": [{"method": "tome", "params": {"keep": 0.5, "schedule": "constant"}}],
        }
    )
    assert len(s.points) == 2 * 2 * (4 + 1)  # the explicit point duplicates a grid point and runs once
    assert len({p.key for p in s.points}) == len(s.points)
    first = s.points[0]
    assert (first.model, first.tasks, first.method, first.params) == (
        "a",
        ("stdlib-code:8",),
        "tome",
        {"keep": 0.9, "schedule": "constant"},
    )
    assert s.points[1].params == {"keep": 0.9, "schedule": "decreasing"}
    assert s.points[4].label == "none" and s.points[5].tasks == ("stdlib-code:8", "nq:5")


@pytest.mark.parametrize(
    "cfg, msg",
    [
        (_cfg(methods=["nope"]), "unknown method"),
        (_cfg(params={"keep": 1.5}), "keep"),
        (_cfg(params={"kep": 0.5}), "unknown parameter"),
        (_cfg(settings={"batchsize": 4}), "settings: unknown keys"),
        (_cfg(settings={"repeats": 0}), "settings.repeats"),
        (_cfg(extra=1), "unknown config keys"),
        (_cfg(tasks=[]), "tasks"),
        ({"tasks": ["stdlib-code:8"]}, "no methods"),
        ({"tasks": ["stdlib-code:8"], "methods": {"none": {"keep": 0.5}}}, "baseline"),
    ],
)
def test_bad_configs_fail_before_compute(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        parse_sweep(cfg)


@pytest.mark.parametrize(
    "cfg, field, value, valid",
    [
        (_cfg(tasks=["nosuchtask:8"]), "tasks: unknown task", "'nosuchtask:8'", "stdlib-code:N"),
        (_cfg(tasks=["stdlib-code:0"]), "tasks: bad item count", "'stdlib-code:0'", "positive int"),
        (_cfg(tasks=["nq:x"]), "tasks: bad item count", "'nq:x'", "positive int"),
        (_cfg(tasks=["stsb-xx"]), "tasks: bad stsb spec", "'stsb-xx'", "LANG in de"),
        (_cfg(tasks=["stsb:5"]), "tasks: bad stsb spec", "'stsb:5'", "no item count"),
        (_cfg(settings={"threads": True}), "settings.threads", "True", ">= 1"),
        (_cfg(settings={"threads": 0}), "settings.threads", "0", ">= 1"),
        (_cfg(settings={"seed": "abc"}), "settings.seed", "'abc'", "[0, 4294967295]"),
        (_cfg(settings={"seed": -1}), "settings.seed", "-1", "[0, 4294967295]"),
        (_cfg(settings={"seed": False}), "settings.seed", "False", "[0, 4294967295]"),
        (_cfg(settings={"batch_size": True}), "settings.batch_size", "True", ">= 1"),
        (_cfg(settings={"repeats": 2.5}), "settings.repeats", "2.5", ">= 1"),
        (_cfg(settings={"pooling": "max"}), "settings.pooling", "'max'", "'mean' or 'cls'"),
        (_cfg(params={"keep": True}), "parameter keep", "True", "float | None"),
        (_cfg(params={"keep": "0.5"}), "parameter keep", "'0.5'", "float | None"),
        (_cfg(methods={"tome": {"keep": 0.5, "prop_attn": "yes"}}), "parameter prop_attn", "'yes'", "bool"),
        (_cfg(models=[3]), "models", "3", "non-empty string"),
        (_cfg(name=["x"]), "name", "['x']", "non-empty string"),
        (_cfg(store=5), "store", "5", "non-empty string"),
        (_cfg(data_dir=True), "data_dir", "True", "non-empty string"),
    ],
)
def test_config_values_checked_before_any_model_loads(cfg, field, value, valid):
    """Each message names the field, the bad value and what is valid."""
    with pytest.raises(ValueError) as e:
        parse_sweep(cfg)
    msg = str(e.value)
    assert field in msg and value in msg and valid in msg, msg


def test_good_values_still_pass():
    s = parse_sweep(
        _cfg(
            tasks=["stdlib-code:8", "nq", "nq:3", "stsb", "stsb-de", "stsb-en-dev"],
            settings={"threads": None, "seed": 4294967295},
            methods={"tome": {"keep": 1, "prop_attn": False}, "random": {"r": [1, 2]}},
            params={},
        )
    )
    assert len(s.points) == 6 * 3


def test_key_covers_config():
    p = Point("m", ("t",), "tome", {"keep": 0.5, "schedule": "constant"}, {"repeats": 5, "seed": 0})
    same = Point("m", ("t",), "tome", {"schedule": "constant", "keep": 0.5}, {"seed": 0, "repeats": 5})
    assert p.key == same.key
    for other in (
        Point("m", ("t",), "tome", {"keep": 0.4, "schedule": "constant"}, p.settings),
        Point("m", ("t",), "tome", p.params, {"repeats": 3, "seed": 0}),
        Point("m2", ("t",), "tome", p.params, p.settings),
        Point("m", ("t", "u"), "tome", p.params, p.settings),
    ):
        assert other.key != p.key
    assert Point.from_dict(p.to_dict()).key == p.key


def test_key_changes_with_library_version(monkeypatch):
    p = Point("m", ("t",), "none", {}, {})
    k = p.key
    monkeypatch.setattr(tokenreduce, "__version__", "9.9.9")
    assert p.key != k


def _outcome(p, error=None, value=1.0):
    return Outcome(p.key, p, None if error else {"x": value}, {}, {}, error, "t0", "t1", 0.1)


def test_store_one_row_per_key_ok_never_overwritten_failed_replaced(tmp_path):
    a, b = (Point("m", ("t",), "tome", {"keep": k}, {}) for k in (0.5, 0.7))
    with Store(tmp_path / "s.sqlite") as s:
        s.record("sw", _outcome(a, value=1.0), "local")
        s.record("sw", _outcome(a, value=2.0), "local")  # a second 'ok' for the same key is ignored
        s.record("sw", _outcome(b, error="boom"), "local")
        assert s.statuses() == {a.key: "ok", b.key: "failed"}
        assert pending([a, b], s) == [] and pending([a, b], s, retry_failed=True) == [b]
        s.record("sw", _outcome(b, error="boom again"), "local")
        s.record("sw", _outcome(b, value=3.0), "local")
        rows = {r["key"]: r for r in s.rows()}
        assert len(rows) == 2 and rows[a.key]["metrics"] == {"x": 1.0}
        assert rows[b.key]["status"] == "ok" and rows[b.key]["error"] is None and rows[b.key]["attempts"] == 3
        assert s.integrity_ok()
    con = sqlite3.connect(tmp_path / "s.sqlite")
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with pytest.raises(sqlite3.IntegrityError):  # the key is UNIQUE at the database level
        con.execute(
            "INSERT INTO points SELECT NULL, key, sweep, model, tasks, method, label, params, settings, "
            "version, status, error, metrics, meta, machine, backend, started_at, finished_at, wall_s, "
            "attempts FROM points LIMIT 1"
        )


def test_failed_point_recorded_then_retried_on_request(tmp_path, tiny_model, capsys):  # noqa: F811
    missing = tmp_path / "later-model"
    cfg = {
        "name": "retry",
        "models": [str(missing)],
        "tasks": ["stdlib-code:8"],
        "methods": {"none": {}},
        "settings": {"threads": 1, "batch_size": 8, "timing_batches": 1, "repeats": 1},
    }
    path = write_config(tmp_path / "r.yaml", cfg)
    db = tmp_path / "r.sqlite"
    assert sweep_main([str(path), "--store", str(db), "--no-progress"]) == 1
    (row,) = stored(db).values()
    assert row["status"] == "failed" and "FileNotFoundError" in row["error"] and row["metrics"] is None
    make_tiny_model(missing)
    assert sweep_main([str(path), "--store", str(db), "--no-progress"]) == 0  # not retried unless asked
    assert next(iter(stored(db).values()))["status"] == "failed"
    assert sweep_main([str(path), "--store", str(db), "--no-progress", "--retry-failed"]) == 0
    (row,) = stored(db).values()
    assert row["status"] == "ok" and row["error"] is None and row["metrics"]["flops_ratio"] == 1.0


def test_resume_skips_stored_points_and_results_cli(tmp_path, tiny_model, capsys):  # noqa: F811
    cfg = sweep_config(tiny_model, methods={"none": {}, "tome": {"keep": [0.7, 0.4]}})
    sweep = parse_sweep(cfg)
    db = tmp_path / "s.sqlite"
    with Store(db) as s:
        first = run_sweep(parse_sweep({**cfg, "methods": {"tome": {"keep": 0.7}}}), s, progress=False)
        assert len(first.ok) == 1
        again = run_sweep(sweep, s, progress=False)
        assert again.skipped == 1 and len(again.ok) == 2
        rows = query(s)
        assert [r["label"] for r in rows] == ["tome(keep=0.7)", "none", "tome(keep=0.4)"]
        assert all(0 < r["flops_ratio"] <= 1 for r in rows) and rows[1]["flops_ratio"] == 1.0
        assert [r["label"] for r in query(s, parse_where(["param:keep=0.40"]))] == ["tome(keep=0.4)"]
        with pytest.raises(ValueError, match="unknown column"):
            query(s, {"nope": "1"})
    assert results_main([str(db), "--method", "tome", "--csv", str(tmp_path / "out.csv")]) == 0
    out = capsys.readouterr().out
    assert "tome(keep=0.4)" in out and "2 point(s)" in out
    with open(tmp_path / "out.csv") as f:
        got = list(csv.DictReader(f))
    assert [r["label"] for r in got] == ["tome(keep=0.7)", "tome(keep=0.4)"]
    assert float(got[1]["flops_ratio"]) == pytest.approx(rows[2]["flops_ratio"])


def test_parquet_export_roundtrip_or_clear_error(tmp_path):
    rows = [{"a": 1, "b": "x", "c": [1, 2]}, {"a": 2, "b": None}]
    try:
        import pyarrow.parquet as pq
    except ImportError:
        with pytest.raises(ValueError, match="pyarrow"):
            write_parquet(rows, tmp_path / "x.parquet")
        return
    t = pq.read_table(write_parquet(rows, tmp_path / "x.parquet")).to_pylist()
    assert [r["a"] for r in t] == [1, 2] and t[0]["c"] == "[1, 2]"
    assert write_csv(rows, tmp_path / "x.csv").read_text().splitlines()[0] == "a,b,c"


@pytest.mark.parametrize(
    "argv, msg",
    [
        (["sweep", "/nonexistent.yaml"], "not found"),
        (["results", "/nonexistent.sqlite"], "no results store"),
        (["sweep", "BAD"], "not valid YAML"),
    ],
)
def test_cli_user_errors(tmp_path, monkeypatch, capsys, argv, msg):
    from tokenreduce.cli import main

    (tmp_path / "BAD").write_text("a: [1,\n")
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("tokenreduce: error:") and msg in err and "Traceback" not in err
