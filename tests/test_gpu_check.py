"""scripts/gpu_check.sh runs as is: its CPU dry run (tiny shapes) writes the full table, and without CUDA the
real run refuses with a clear message instead of reporting CPU numbers as GPU figures."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def test_dry_run_writes_every_row(tmp_path):
    out = tmp_path / "gc"
    res = subprocess.run(["bash", str(SCRIPT), "--dry-run", "--out", str(out)], capture_output=True, text=True,
                         env=_env(), timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["mode"] == "dry-run" and report["device"] and report["complete"]
    configs = {(r["model"], r["config"]) for r in report["rows"]}
    assert {c for _, c in configs} >= {
        "unreduced", "tome r=8 (SDPA, float mask)", "tome r=13 (SDPA, float mask)",
        "tome r=8 prop_attn=False (SDPA, no mask)", "tome README setting (SDPA, float mask)", "full cache",
        "adakv keep=0.25",
    }
    assert {m for m, _ in configs} == {"ViT (tiny)", "BERT (tiny)", "Llama (tiny)"}
    for r in report["rows"]:
        assert "error" not in r, r
        assert r["items_per_s"] > 0 and math.isfinite(r["ratio"]) and r["ratio"] > 0, r
    base = [r for r in report["rows"] if r["config"] in ("unreduced", "full cache")]
    assert all(r["ratio"] == 1.0 for r in base)
    md = (out / "gpu_check.md").read_text()
    assert "not GPU figures" in md and "309 -> 511" in md
    assert "would run: TOKENREDUCE_TEST_DEVICE=cuda" in res.stdout


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_without_cuda_the_real_run_refuses(tmp_path):
    res = subprocess.run(["bash", str(SCRIPT), "--out", str(tmp_path)], capture_output=True, text=True, env=_env(),
                         timeout=120)
    assert res.returncode == 2 and "no CUDA device" in res.stderr
    assert not (tmp_path / "gpu_check.json").exists()


def test_bad_option_is_refused():
    res = subprocess.run(["bash", str(SCRIPT), "--bogus"], capture_output=True, text=True, timeout=30)
    assert res.returncode == 2 and "unknown option --bogus" in res.stderr


def test_test_summary_is_read_from_the_pytest_log(tmp_path):
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "scripts" / "gpu_check.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    log = tmp_path / "pytest.log"
    log.write_text("....\nFAILED tests/x.py::t\n==== 1 failed, 1900 passed, 7 skipped in 201.3s ====\n")
    assert mod.tests_summary(1, log, "cuda") == {
        "rc": 1, "summary": "1 failed, 1900 passed, 7 skipped in 201.3s", "device": "cuda"}
    assert mod.tests_summary(None, log, "cuda") is None
