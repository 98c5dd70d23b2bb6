"""The command line: listing, validation before work, and a small end-to-end run."""

from __future__ import annotations

import json

from tokenreduce.cli import main


def test_methods_lists_all(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("tome", "evit", "topk-norm", "random"):
        assert name in out


def test_bad_arguments_fail_fast(capsys):
    assert main(["bench", "--methods", "nope"]) == 2
    assert "unknown method" in capsys.readouterr().err
    assert main(["bench", "--keep", "1.5"]) == 2
    assert "keep must be in (0, 1]" in capsys.readouterr().err
    assert main(["bench", "--data", "mystery"]) == 2
    assert "unknown task" in capsys.readouterr().err.lower()


def test_text_bench_end_to_end(tmp_path, capsys):
    out = tmp_path / "res"
    code = main(
        [
            "bench",
            "--data",
            "stdlib-code:24",
            "--methods",
            "tome,random",
            "--keep",
            "0.5",
            "--repeats",
            "1",
            "--timing-batches",
            "1",
            "--batch-size",
            "8",
            "--no-progress",
            "--out",
            str(out),
        ]
    )
    assert code == 0
    text = capsys.readouterr().out
    assert "Pareto-optimal" in text and "tome(keep=0.5" in text
    res = json.loads(out.with_suffix(".json").read_text())
    assert [r["config"] for r in res["rows"]][0] == "none"
    assert len(res["rows"]) == 3
    for r in res["rows"][1:]:
        assert 0.3 < r["flops_ratio"] < 1.0 and r["speedup"] > 0 and 0 <= r["stdlib-code:mrr"] <= 1
    page = out.with_suffix(".html").read_text()  # the sweep report's page, from this one run
    assert "Pareto" in page and "tome(keep=0.5" in page and "<svg" in page
    assert "Recommended (fastest within 1% of the unreduced stdlib-code:mrr): " in text


def test_default_text_grid_is_one_representative_setting_per_method():
    from tokenreduce.bench.text_bench import README_TOME, representative_grid
    from tokenreduce.encoder.methods import methods as all_methods
    from tokenreduce.encoder.methods.base import REGISTRY

    cfgs = representative_grid(["tome", "evit", "mctf"])
    assert [c.method for c in cfgs] == ["tome", "tome", "evit", "mctf"]
    assert cfgs[0].params == README_TOME and all(c.params["keep"] == 0.5 for c in cfgs[1:])
    text = [m for m in all_methods() if not getattr(REGISTRY.get(m), "requires_grid", False)]  # as the CLI does
    assert len(representative_grid(text)) == len(text) + 1


def test_recommendation_is_the_fastest_setting_within_the_tolerance():
    from tokenreduce.cli.bench_page import call, recommend

    rows = [{"method": "none", "q": 0.80}, {"method": "a", "q": 0.795, "speedup": 1.4, "params": {"keep": 0.7}},
            {"method": "b", "q": 0.70, "speedup": 2.5}, {"method": "c", "q": 0.799, "speedup": 0.9}]
    assert recommend(rows, "q", 0.01)["method"] == "a"
    assert call(recommend(rows, "q", 0.01)) == 'tokenreduce.patch(model, "a", keep=0.7)'
    assert recommend(rows, "q", 0.0) is None and call(None).startswith("no reduction")


def test_quiet_and_verbose_are_global_flags(monkeypatch):
    from tokenreduce.cli import output_level

    for key in ("TQDM_DISABLE", "TOKENREDUCE_OUTPUT"):
        monkeypatch.delenv(key, raising=False)
    with __import__("warnings").catch_warnings():
        assert output_level(["bench", "--quiet", "kv"]) == (["bench", "kv"], "quiet")
        assert __import__("os").environ["TQDM_DISABLE"] == "1"
        assert output_level(["--verbose", "methods"]) == (["methods"], "verbose")
    assert main(["--quiet", "--verbose", "methods"]) == 2


def test_vit_bench_end_to_end(capsys, monkeypatch):
    import tokenreduce.bench.vision_bench as vb

    small = vb.vit_b16
    monkeypatch.setattr(vb, "vit_b16", lambda: small(num_layers=2, image_size=64))
    assert main(["bench", "vit", "--r", "4", "--repeats", "1", "--batch-size", "2", "--no-progress"]) == 0
    assert "tome(r=4)" in capsys.readouterr().out


def test_parse_config():
    from tokenreduce.cli import parse_config

    assert parse_config("tome:keep=0.4,schedule=decreasing,min_tokens=16,prop_attn=false") == (
        "tome",
        {"keep": 0.4, "schedule": "decreasing", "min_tokens": 16, "prop_attn": False},
    )
    assert main(["bench", "--config", "tome:keep"]) == 2
    assert main(["bench", "--config", "tome:keep=0.5,metric=nope"]) == 2


def test_help_lists_every_command_without_importing_torch():
    import subprocess
    import sys

    from tokenreduce.cli.commands import COMMANDS

    code = ("import sys; from tokenreduce.cli import main; rc = main(['--help']); "
            "assert 'torch' not in sys.modules, 'torch imported'; sys.exit(rc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for words in COMMANDS:
        assert " ".join(words) in out.stdout
    version = subprocess.run([sys.executable, "-m", "tokenreduce", "--version"], capture_output=True, text=True,
                             timeout=120)
    assert version.stdout.startswith("tokenreduce 0.")


def test_typos_get_did_you_mean(capsys):
    assert main(["bench", "vison"]) == 2
    err = capsys.readouterr().err
    from tokenreduce.cli.commands import BENCH_GROUPS

    assert "did you mean 'vision'" in err and all(g in err for g in BENCH_GROUPS)  # every benchmark named
    assert main(["bnech"]) == 2
    assert "did you mean 'bench'" in capsys.readouterr().err


def test_methods_lists_every_family(capsys):
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for title in ("encoder methods", "visual-token methods", "KV-cache presses", "prompt-compression methods",
                  "diffusion methods"):
        assert title in out
    for name in ("tome", "fastervlm", "snapkv", "extractive", "tomesd", "todo"):
        assert f"\n{name} " in out


def test_r_is_checked_not_ignored(capsys):
    assert main(["bench", "--methods", "tome", "--r", "-2"]) == 2
    assert "--r applies to `tokenreduce bench vit`" in capsys.readouterr().err
    assert main(["bench", "vit", "--r", "-2"]) == 2
    assert "positive whole numbers" in capsys.readouterr().err
    assert main(["bench", "vit", "--r", "2.5"]) == 2
    assert "positive whole numbers" in capsys.readouterr().err


def test_every_help_shows_defaults(capsys):
    import pytest as _pytest

    from tokenreduce.cli.commands import COMMANDS

    for words in COMMANDS:
        with _pytest.raises(SystemExit) as done:
            main([*words, "--help"])
        assert done.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith("usage: tokenreduce"), words
    with _pytest.raises(SystemExit):
        main(["bench", "kv", "--help"])
    assert "(default: 0.25)" in capsys.readouterr().out
