"""The vision table: grid building (errors before compute, skips with reasons), analytic MACs,
the accuracy columns against the testbed, the timing path on a tiny model, and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("sklearn", reason="the digits testbed needs scikit-learn (the vision extra)")

from tokenreduce.bench import vision_table as vt  # noqa: E402
from tokenreduce.bench.text_bench import RunConfig  # noqa: E402
from tokenreduce.bench.vision_cli import main  # noqa: E402
from tokenreduce.bench.vision_testbed import DigitsTestbed  # noqa: E402
from tokenreduce.encoder.cost import encoder_cost, total_macs  # noqa: E402
from tokenreduce.encoder.methods import make_method, methods  # noqa: E402


@pytest.fixture(scope="module")
def tb() -> DigitsTestbed:
    return DigitsTestbed()


def test_grid_errors_before_compute():
    with pytest.raises(ValueError, match="unknown method"):
        vt.build_configs(["tome", "nope"])
    with pytest.raises(ValueError, match=r"keep must be in \(0, 1\]"):
        vt.build_configs(["tome"], keeps=[1.5])
    with pytest.raises(ValueError, match="metric"):
        vt.build_configs(["tome"], keeps=[], extra=[RunConfig("tome", {"keep": 0.5, "metric": "nope"})])


def test_grid_covers_methods_and_skips_with_reason():
    configs, skipped = vt.build_configs(["tome", "random"], keeps=[0.7, 0.3], schedules=["constant", "decreasing"])
    assert len(configs) == 8 and not skipped
    assert {c.params["schedule"] for c in configs} == {"constant", "decreasing"}

    def probe(cfg: RunConfig) -> None:
        if cfg.method == "random":
            raise TypeError("does not fit")

    configs, skipped = vt.build_configs(["tome", "random"], keeps=[0.5], probe=probe)
    assert [c.method for c in configs] == ["tome", "tome"]
    assert len(skipped) == 1 and skipped[0].method == "random" and "does not fit" in skipped[0].reason


def test_schedule_without_effect_is_not_run_twice():
    """A one-step method (pooling) ignores the schedule shape: only its first schedule is run."""
    if "pool" not in methods():
        pytest.skip("pool method not registered")
    configs, skipped = vt.build_configs(["pool", "tome"], keeps=[0.5], schedules=["constant", "decreasing"])
    assert [c.label for c in configs] == [
        "pool(keep=0.5, schedule=constant)",
        "tome(keep=0.5, schedule=constant)",
        "tome(keep=0.5, schedule=decreasing)",
    ]
    assert skipped[0].method == "pool" and "same per-layer budget" in skipped[0].reason


def test_vit_b16_dims_and_macs():
    from tokenreduce.bench.vision_bench import vit_b16
    from tokenreduce.encoder.adapters.patching import resolve_family

    model = vit_b16(num_layers=1)
    fam, _ = resolve_family(model)
    d = fam.dims(model)
    assert (d.hidden, d.heads, d.head_dim, d.ffn) == (vt.VIT_B16.hidden, vt.VIT_B16.heads, 64, 3072)
    base, final = vt.vit_b16_macs(None)
    assert final == 197
    # hand count for one unreduced block: 4 projections + 2 attention products + 2 MLP matmuls
    per_layer = 4 * 197 * 768 * 768 + 2 * 197 * 197 * 768 + 2 * 197 * 768 * 3072
    assert base == 12 * per_layer
    assert base / 1e9 == pytest.approx(17.4, abs=0.05)  # the usual "17.6 GFLOPs" counts embeddings/head too
    m = make_method("tome", r=8)
    macs, final = vt.vit_b16_macs(m)
    assert final == 197 - 12 * 8
    assert macs == total_macs(encoder_cost(vt.VIT_B16, torch.tensor([197]), m, 1))


def test_accuracy_rows_match_the_testbed(tb):
    configs = [RunConfig("tome", {"keep": 0.7, "schedule": "constant"}), RunConfig("random", {"keep": 0.3})]
    res = vt.run_vision_table(configs, tb, timing=False, progress=False)
    base, tome, rand = res["rows"]
    assert base["config"] == "none" and base["accuracy"] == tb.base["accuracy"] and base["agreement"] == 1.0
    again = tb.score("random", keep=0.3)
    assert (rand["accuracy"], rand["agreement"]) == (again["accuracy"], again["agreement"])
    assert 0.3 < rand["flops_ratio"] < tome["flops_ratio"] < 1.0
    assert 0.3 < rand["digits_flops_ratio"] < tome["digits_flops_ratio"] < 1.0
    assert rand["acc_change"] == pytest.approx(100 * (rand["accuracy"] - base["accuracy"]))
    for r in res["rows"]:  # Pareto: no other row at least as cheap and as accurate, better in one
        dominated = any(
            o["mac_speedup"] >= r["mac_speedup"]
            and o["accuracy"] >= r["accuracy"]
            and (o["mac_speedup"] > r["mac_speedup"] or o["accuracy"] > r["accuracy"])
            for o in res["rows"]
        )
        assert r["pareto"] == (not dominated)
    assert "speedup" not in tome


def test_timing_path_on_a_tiny_vit(tb, monkeypatch):
    import tokenreduce.bench.vision_bench as vb

    small = vb.vit_b16
    monkeypatch.setattr(vb, "vit_b16", lambda: small(num_layers=2, image_size=64))
    res = vt.run_vision_table([RunConfig("tome", {"keep": 0.5})], tb, repeats=1, batch_size=2, progress=False)
    base, row = res["rows"]
    assert base["speedup"] == 1.0 and row["speedup"] > 0 and row["throughput"] > 0
    assert isinstance(row["pareto"], bool) and res["meta"]["pareto"] == "speedup vs accuracy"


def test_cli_bad_input(capsys):
    assert main(["--methods", "nope", "--no-timing"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["--keep", "0", "--no-timing"]) == 2
    assert "keep must be in (0, 1]" in capsys.readouterr().err
    assert main(["--schedule", "linear", "--no-timing"]) == 2
    assert "--schedule" in capsys.readouterr().err
    assert main(["--config", "tome:keep", "--no-timing"]) == 2
    assert "tokenreduce: error:" in capsys.readouterr().err


def test_cli_no_timing_end_to_end(tmp_path, capsys):
    """Through the main ``tokenreduce`` command (dispatch), a grid point plus an explicit config."""
    from tokenreduce.cli import main as cli_main

    out = tmp_path / "vision"
    code = cli_main(
        ["bench", "vision", "--methods", "topk-norm", "--keep", "0.5", "--schedule", "constant", "--no-timing"]
        + ["--no-progress", "--config", "tome:keep=0.3,schedule=decreasing", "--out", str(out)]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "topk-norm(keep=0.5, schedule=constant)" in text and "top-1 agree" in text
    res = json.loads(out.with_suffix(".json").read_text())
    assert [r["config"] for r in res["rows"]] == [
        "none",
        "topk-norm(keep=0.5, schedule=constant)",
        "tome(keep=0.3, schedule=decreasing)",
    ]
    assert out.with_suffix(".csv").exists()


def test_cli_reuses_timings(tmp_path, capsys):
    label = "tome(keep=0.5, schedule=constant)"
    rows = [
        {"config": "none", "speedup": 1.0, "throughput": 10.0, "base_throughput": 10.0},
        {"config": label, "speedup": 1.5, "throughput": 15.0, "base_throughput": 10.0},
    ]
    path = tmp_path / "speed.json"
    path.write_text(json.dumps({"meta": {}, "rows": rows}))
    out = tmp_path / "res"
    args = ["--methods", "tome", "--keep", "0.5", "--schedule", "constant", "--no-progress", "--speed-from", str(path)]
    assert main([*args, "--out", str(out)]) == 0
    res = json.loads(out.with_suffix(".json").read_text())
    assert res["rows"][1]["speedup"] == 1.5 and res["rows"][0]["throughput"] == 10.0
    assert res["meta"]["speed_from"] == str(path)
    capsys.readouterr()
    assert main([*args[:3], "0.3", *args[4:]]) == 2  # keep 0.3 was not timed
    assert "lack" in capsys.readouterr().err


@pytest.mark.slow
def test_full_table_runs(tb):
    """Every registered method at the default grid, timed on ViT-B/16 (minutes)."""
    configs, skipped = vt.build_configs(probe=vt.vit_probe(tb))
    res = vt.run_vision_table(configs, tb, repeats=3, progress=False)
    assert len(res["rows"]) == len(configs) + 1
    assert {r["method"] for r in res["rows"][1:]} | {s.method for s in skipped} == set(methods())
    assert all(r["speedup"] > 0 and 0 <= r["accuracy"] <= 1 for r in res["rows"])
