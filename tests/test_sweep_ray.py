"""The Ray backend stores the same results as the local one (timings excepted)."""

from __future__ import annotations

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
