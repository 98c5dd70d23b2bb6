"""The diffusion benchmark (tokenreduce.diffusion.bench / `tokenreduce bench diffusion`) and diffusion
points in the sweep runner: step MACs = FlopCounterMode, ratios against the same-process baseline,
bad input refused before any model is built, and a sweep point measured and stored."""

from __future__ import annotations

import json

import pytest

from tokenreduce.bench.flops import measured_flops
from tokenreduce.cli import main
from tokenreduce.diffusion.bench import Config, bench_speed
from tokenreduce.diffusion.bench_digits import ASSET_DIR
from tokenreduce.sweep import Store, parse_sweep, run_sweep

diffusers = pytest.importorskip("diffusers")

from test_diffusion import inputs, model_for  # noqa: E402

trained = pytest.mark.skipif(not (ASSET_DIR / "config.json").exists(), reason="no trained digits DiT")


def test_labels_keep_the_parameters_order_unlike_the_encoder_benches():
    """One shared config type (bench/run_config.py): the diffusion tables keep the given order, text sorts."""
    from tokenreduce.bench.text_bench import RunConfig

    params = {"ratio": 0.5, "max_downsample": 2}
    assert Config("tomesd", params).label == "tomesd(ratio=0.5, max_downsample=2)"
    assert RunConfig("tomesd", params).label == "tomesd(max_downsample=2, ratio=0.5)"
    assert Config(None).label == RunConfig(None).label == "none"


def test_speed_rows_step_macs_equal_flop_counter_and_ratios_are_against_the_base():
    model = model_for("unet")
    args, kwargs = inputs("unet")
    configs = [Config("tomesd", {"ratio": 0.5}), Config("todo", {"stride": (2, 2)})]
    rows = bench_speed("tiny", configs, repeats=1, memory=True, built=(model, args, kwargs, (16, 16)), context=7)
    assert [r["config"] for r in rows] == ["none", "tomesd(ratio=0.5)", "todo(stride=(2, 2))"]
    base = rows[0]
    assert base["speedup"] == base["macs_ratio"] == base["memory_ratio"] == 1.0
    for cfg, row in zip([None, *configs], rows):
        import tokenreduce

        if cfg is None:
            flops = measured_flops(lambda: model(*args, **kwargs))
        else:
            with tokenreduce.patched(model, cfg.method, **cfg.params):
                flops = measured_flops(lambda: model(*args, **kwargs))
        assert 2 * row["step_macs"] == flops, row["config"]
        assert row["step_s"] > 0 and row["peak_mb"] > 0
    assert rows[1]["macs_ratio"] < 1 and rows[2]["macs_ratio"] < 1
    assert not [type(m).__name__ for m in model.modules() if "forward" in vars(m)]  # left unpatched


@pytest.mark.parametrize(("argv", "msg"), [
    (["--models", "unet-2048"], "unknown --models"),
    (["--methods", "tome"], "unknown methods"),
    (["--ratios", "0.9"], r"ratio must be in \[0, 0.75\]"),
    (["--repeats", "0"], "must be >= 1"),
])
def test_cli_refuses_bad_input_before_building(argv, msg, capsys):
    assert main(["bench", "diffusion", *argv, "--no-progress"]) == 2
    assert msg.replace("\\", "") in capsys.readouterr().err.replace("\\", "")


@pytest.mark.parametrize(("cfg", "msg"), [
    ({"tasks": ["diffusion-speed", "nq"], "models": ["unet-512"], "methods": ["tomesd"]}, "cannot share a sweep"),
    ({"tasks": ["diffusion-speed"], "models": ["all-MiniLM-L6-v2"], "methods": ["tomesd"]}, "diffusion-speed measures"),
    ({"tasks": ["diffusion-speed"], "methods": ["tomesd"]}, "diffusion-speed measures"),
    ({"tasks": ["diffusion-quality"], "models": ["dit-digits"], "methods": {"tomesd": {"ratio": 0.8}}},
     r"ratio must be in \[0, 0.75\]"),
    ({"tasks": ["diffusion-quality"], "models": ["dit-digits"], "methods": {"tome": {"keep": 0.5}}}, "tome"),
    ({"tasks": [["diffusion-speed", "diffusion-quality"]], "models": ["dit-digits"], "methods": ["todo"]},
     "holds one task"),
])
def test_sweep_refuses_bad_diffusion_points(cfg, msg):
    with pytest.raises(ValueError, match=msg):
        parse_sweep(cfg)


def test_sweep_expands_diffusion_points():
    sweep = parse_sweep({"tasks": ["diffusion-speed"], "models": ["unet-1024", "dit-256"],
                         "methods": {"none": None, "tomesd": {"ratio": [0.3, 0.5]}, "todo": {"stride": [[2, 2]]}}})
    assert [(p.model, p.label) for p in sweep.points] == [
        (m, label) for m in ("unet-1024", "dit-256")
        for label in ("none", "tomesd(ratio=0.3)", "tomesd(ratio=0.5)", "todo(stride=[2, 2])")]


@trained
def test_a_diffusion_quality_point_is_measured_and_stored(tmp_path):
    """ratio 0 reproduces the unreduced samples exactly (pixel error 0, same accuracy); ratio 0.5 differs."""
    sweep = parse_sweep({"name": "d", "tasks": ["diffusion-quality:4"], "models": ["dit-digits"],
                         "methods": {"tomesd": {"ratio": [0.0, 0.5]}}, "settings": {"threads": 1}})
    with Store(tmp_path / "s.sqlite") as store:
        summary = run_sweep(sweep, store, progress=False)
        assert len(summary.ok) == 2 and not summary.failed
        rows = {r["label"]: r["metrics"] for r in store.rows()}
    zero, half = rows["tomesd(ratio=0.0)"], rows["tomesd(ratio=0.5)"]
    assert zero["pixel_err_mean"] == 0 and zero["accuracy"] == zero["base:accuracy"]
    assert half["pixel_err_mean"] > 0 and half["block_macs_ratio"] < 1


@trained
def test_cli_quality_table_and_json(tmp_path, capsys):
    out = tmp_path / "q.json"
    assert main(["bench", "diffusion", "--table", "quality", "--methods", "todo", "--samples", "3", "--steps", "2",
                 "--grid", str(tmp_path / "g.png"), "--out", str(out), "--no-progress"]) == 0
    text = capsys.readouterr().out
    assert "todo(stride=(2, 2))" in text and "accuracy" in text
    rows = json.loads(out.read_text())["rows"]
    assert [r["config"] for r in rows] == ["none", "todo(stride=(2, 1))", "todo(stride=(2, 2))"]
    assert rows[0]["pixel_err_mean"] == 0 and (tmp_path / "g.png").stat().st_size > 0


def test_cli_macs_table_on_the_meta_device(tmp_path, capsys):
    """The analytic table at DiT-XL/2 size, no weights built: 118.7 GMACs per 256² image (the DiT paper's
    118.6 "Gflops" are MACs), dit-merge 0.5 about half of it."""
    out = tmp_path / "m.json"
    assert main(["bench", "diffusion", "--table", "macs", "--models", "dit-256", "--methods", "dit-merge",
                 "--ratios", "0.5", "--out", str(out), "--no-progress"]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert round(rows[0]["step_gmacs"] / 2, 1) == 118.7
    assert 0.45 < rows[1]["macs_ratio"] < 0.55
