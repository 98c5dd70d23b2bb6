"""The sweep report: Pareto flags, self-containment, PNGs, and the page in headless Chromium."""

from __future__ import annotations

import re
import shutil

import pytest
from test_sweep_utils import sweep_config, tiny_model  # noqa: F401 (fixture)

from tokenreduce.sweep import Store, parse_sweep, run_sweep
from tokenreduce.sweep.report import write_report
from tokenreduce.sweep.report_cli import main as report_main
from tokenreduce.sweep.report_data import groups
from tokenreduce.sweep.svg import nice_ticks

METHODS = {"none": {}, "tome": {"keep": [0.8, 0.5]}, "evit": {"keep": 0.5}, "topk-norm": {"keep": 0.5}}


@pytest.fixture(scope="module")
def report_dir(tmp_path_factory, tiny_model):  # noqa: F811
    tmp = tmp_path_factory.mktemp("report")
    sweep = parse_sweep(sweep_config(tiny_model, methods=METHODS))
    with Store(tmp / "r.sqlite") as s:
        run_sweep(sweep, s, progress=False)
        write_report(s, tmp / "out", title="tiny report", note="test note <b>escaped</b>")
    return tmp


def _row(method, flops, lat, q, base_lat=10.0):
    return {
        "status": "ok",
        "model": "m",
        "tasks": "t",
        "method": method,
        "label": f"{method}({flops})",
        "primary_quality": "t:mrr",
        "flops_ratio": flops,
        "latency_ms": lat,
        "t:mrr": q,
        "base_latency_ms": base_lat,
        "base:t:mrr": 0.9,
        "gmacs_per_text": flops * 2,
    }


def test_groups_synthesize_baseline_and_flag_pareto_like_brute_force():
    rows = [
        _row("a", 0.5, 6.0, 0.8),
        _row("a", 0.7, 7.0, 0.85),
        _row("b", 0.6, 5.0, 0.7, base_lat=12.0),
        _row("b", 0.8, 9.0, 0.7, base_lat=12.0),
        {**_row("c", 0.4, 1.0, 0.1), "status": "failed"},
    ]
    (g,) = groups(rows)
    base = g.points[0]
    assert base["method"] == "none" and base["flops_ratio"] == 1.0 and base["t:mrr"] == 0.9
    assert base["latency_ms"] == 11.0 and base["gmacs_per_text"] == pytest.approx(2.0)
    assert "c" not in g.methods
    for cost in ("flops_ratio", "latency_ms"):
        for p in g.points:  # independent definition: nobody is at least as good on both and better on one
            dominated = any(
                o[cost] <= p[cost] and o["t:mrr"] >= p["t:mrr"] and (o[cost] < p[cost] or o["t:mrr"] > p["t:mrr"])
                for o in g.points
            )
            assert p[f"pareto_{cost}"] == (not dominated)
    assert {p["label"] for p in g.points if p["pareto_flops_ratio"]} == {"none", "a(0.5)", "a(0.7)"}
    assert {p["label"] for p in g.points if p["pareto_latency_ms"]} == {"b(0.6)", "a(0.5)", "a(0.7)", "none"}


@pytest.mark.parametrize("lo, hi", [(0.0, 1.0), (0.31, 0.97), (2.1, 2.1), (-3.0, 250.0), (0.001, 0.0042)])
def test_nice_ticks_cover_range(lo, hi):
    t = nice_ticks(lo, hi)
    assert t[0] <= lo and t[-1] >= hi and 2 <= len(t) <= 12 and t == sorted(t)


def test_report_is_self_contained_and_lists_every_method(report_dir):
    html = (report_dir / "out" / "index.html").read_text()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html), "the report must not load anything"
    assert "@import" not in html and "<link" not in html
    for m in METHODS:
        assert f'data-method="{m}"' in html
    assert "test note &lt;b&gt;escaped&lt;/b&gt;" in html
    assert html.count("<svg") == 2 and "Machine and versions" in html and "torch_threads" in html
    for name in ("accuracy_vs_flops.png", "accuracy_vs_latency.png"):
        data = (report_dir / "out" / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_report_cli_errors(tmp_path, capsys):
    assert report_main([str(tmp_path / "none.sqlite")]) == 2
    assert "no results store" in capsys.readouterr().err
    Store(tmp_path / "empty.sqlite").close()
    assert report_main([str(tmp_path / "empty.sqlite"), "--out", str(tmp_path / "o")]) == 2
    assert "no stored points" in capsys.readouterr().err


def _chrome_driver(tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed")
    binary = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not binary or not driver_path:
        pytest.skip("headless Chromium not installed (scripts/install_chromium.sh installs chromium + chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = binary
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--disable-dev-shm-usage",
        f"--user-data-dir={tmp_path / 'chrome-profile'}",
    ):
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(driver_path), options=opts)


def test_report_in_headless_chromium(report_dir, tmp_path):
    driver = _chrome_driver(tmp_path)
    try:
        driver.get((report_dir / "out" / "index.html").as_uri())
        ready = driver.execute_script("return document.body.dataset.ready")
        logs = driver.get_log("browser")
        text = driver.find_element("tag name", "body").text
        shown = set(
            driver.execute_script(
                "return Array.from(document.querySelectorAll('button.toggle')).map(b => b.dataset.method)"
            )
        )
        n_circles = driver.execute_script("return document.querySelectorAll('svg.plot circle').length")
        # the toggles work: hiding tome hides its series
        driver.execute_script("document.querySelector('button.toggle[data-method=\"tome\"]').click()")
        hidden = driver.execute_script(
            "return getComputedStyle(document.querySelector('g.series[data-method=\"tome\"]')).display"
        )
    finally:
        driver.quit()
    assert [e for e in logs if e["level"] in ("SEVERE", "WARNING")] == []
    assert ready == str(len(METHODS)), "the report script did not run to the end"
    assert shown == set(METHODS)
    for m in METHODS:
        assert m in text
    assert n_circles == 2 * 5  # every point (baseline + 4 reduced) in both plots
    assert hidden == "none"


def test_chromium_test_catches_console_errors(report_dir, tmp_path):
    """The check above can fail: a page with a script error is reported."""
    broken = report_dir / "out" / "broken.html"
    page = (report_dir / "out" / "index.html").read_text()
    broken.write_text(page.replace("(function () {", "(function () { x.y;", 1))
    driver = _chrome_driver(tmp_path)
    try:
        driver.get(broken.as_uri())
        logs = driver.get_log("browser")
        ready = driver.execute_script("return document.body.dataset.ready")
    finally:
        driver.quit()
    assert any(e["level"] == "SEVERE" for e in logs) and ready is None


def test_committed_example_report_in_headless_chromium(tmp_path):
    """docs/report/index.html (from examples/sweeps/minilm.yaml) loads cleanly and shows every method of the config."""
    from pathlib import Path

    from tokenreduce.sweep import load_sweep

    root = Path(__file__).resolve().parents[1]
    page = root / "docs" / "report" / "index.html"
    if not page.exists():
        pytest.skip("no committed example report")
    methods = {p.method for p in load_sweep(root / "examples" / "sweeps" / "minilm.yaml").points}
    driver = _chrome_driver(tmp_path)
    try:
        driver.get(page.as_uri())
        logs = driver.get_log("browser")
        shown = set(
            driver.execute_script(
                "return Array.from(document.querySelectorAll('button.toggle')).map(b => b.dataset.method)"
            )
        )
        ready = driver.execute_script("return document.body.dataset.ready")
    finally:
        driver.quit()
    assert [e for e in logs if e["level"] in ("SEVERE", "WARNING")] == []
    assert shown == methods and ready == str(len(methods))
    for png in ("accuracy_vs_flops.png", "accuracy_vs_latency.png"):
        assert (page.parent / png).read_bytes()[:4] == b"\x89PNG"
