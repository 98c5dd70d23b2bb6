"""The ``tune --out`` page, rendered from a hand-made result (no model): self-contained, and in headless
Chromium (skipped without it) free of console errors, every point drawn, toggles working, a screenshot."""

from __future__ import annotations

from test_report import _chrome_driver

from tokenreduce.sweep.tune import TuneResult
from tokenreduce.sweep.tune_data import Tolerance
from tokenreduce.sweep.tune_report import summary, write_page


def _row(method: str, keep: float, speedup: float, quality: float) -> dict:
    loss = (0.9 - quality) / 0.9
    return {"method": method, "label": f"{method}(keep={keep})", "keep": keep, "flops_ratio": 0.5 + keep / 2,
            "speedup": speedup, "quality": quality, "base_quality": 0.9, "loss": loss, "meets": loss <= 0.01}


def _result() -> TuneResult:
    rows = [_row("none", 1.0, 1.0, 0.9), _row("tome", 0.7, 1.2, 0.899), _row("tome", 0.5, 1.5, 0.895),
            _row("evit", 0.7, 1.1, 0.897), _row("evit", 0.5, 1.6, 0.85)]
    pick = {**rows[2], "held": _row("tome", 0.5, 1.4, 0.893)}
    return TuneResult(Tolerance("mrr", max_loss=0.01), rows, [pick], pick, measured=5, reused=0, skipped=2,
                      wall_s=12.0, machine={"cpu": "test"})


def test_tune_page_offline_and_in_headless_chromium(tmp_path):
    paths = write_page(_result(), "mrr", tmp_path, "tune test", "tokenreduce tune data.txt")
    page = paths[0].read_text()
    assert "http://" not in page and "https://" not in page and "<svg" in page
    assert 'tokenreduce.patch(model, &quot;tome&quot;, keep=0.5)' in page
    assert "Recommended: tokenreduce.patch" in summary(_result(), "mrr")
    driver = _chrome_driver(tmp_path)
    try:
        driver.get(paths[0].as_uri())
        logs = driver.get_log("browser")
        ready = driver.execute_script("return document.body.dataset.ready")
        circles = driver.execute_script("return document.querySelectorAll('svg.plot circle').length")
        driver.execute_script("document.querySelector('button.toggle[data-method=\"evit\"]').click()")
        hidden = driver.execute_script(
            "return getComputedStyle(document.querySelector('g.series[data-method=\"evit\"]')).display")
        assert driver.save_screenshot(str(tmp_path / "tune.png"))
    finally:
        driver.quit()
    assert [e for e in logs if e["level"] in ("SEVERE", "WARNING")] == []
    assert ready == "3" and circles == 5 and hidden == "none"
    assert (tmp_path / "tune.png").stat().st_size > 1000
