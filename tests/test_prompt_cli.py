"""``tokenreduce compress`` and ``tokenreduce bench prompt`` command lines."""

from __future__ import annotations

import pytest

from tokenreduce.bench.encoder import default_model_path
from tokenreduce.cli import main

TEXT = "Alice: The launch is on 2024-03-15 at dawn.\nBob: Great, see https://x.org for details. We need fuel.\n"


def test_compress_prints_text_stats_and_html(tmp_path, capsys):
    f = tmp_path / "in.txt"
    f.write_text(TEXT, encoding="utf-8")
    page = tmp_path / "kept.html"
    tok = str(default_model_path())
    code = main(["compress", str(f), "--rate", "0.5", "--method", "first", "--tokenizer", tok, "--html", str(page)])
    cap = capsys.readouterr()
    assert code == 0 and cap.out.startswith("Alice: The launch")
    assert "tokens (target" in cap.err and "x, tokenizer" in cap.err
    html = page.read_text(encoding="utf-8")
    assert '<span class="k">' in html and '<span class="d">' in html and "https://x.org" in html


@pytest.mark.parametrize("granularity", ["sentence", "token"])
def test_compress_says_its_granularity(tmp_path, capsys, granularity):
    import json

    f = tmp_path / "in.txt"
    f.write_text(TEXT, encoding="utf-8")
    tok = str(default_model_path())
    args = ["compress", str(f), "--rate", "0.5", "--method", "first", "--tokenizer", tok, "--json"]
    code = main(args + ["--granularity", granularity])
    cap = capsys.readouterr()
    stats = json.loads(cap.err.strip().splitlines()[-1])
    assert code == 0 and stats["granularity"] == granularity
    assert stats["ratio"] >= stats["target_ratio"] and stats["compressed_tokens"] <= stats["target_tokens"]
    if granularity == "sentence":
        assert stats["sentences_whole"] == stats["sentences_kept"] >= 1


def test_compress_errors(tmp_path, capsys):
    f = tmp_path / "in.txt"
    f.write_text(TEXT, encoding="utf-8")
    tok = str(default_model_path())
    assert main(["compress", str(tmp_path / "missing.txt"), "--rate", "0.5"]) == 2
    assert main(["compress", str(f), "--rate", "1.5", "--method", "first", "--tokenizer", tok]) == 2
    assert main(["compress", str(f), "--rate", "0.5", "--method", "nope"]) == 2
    assert main(["compress", str(f), "--rate", "0.5", "--tokenizer", "no_such_tokenizer"]) == 2
    err = capsys.readouterr().err
    assert err.count("tokenreduce: error:") == 4 and "Traceback" not in err


def test_bench_prompt_errors(capsys):
    assert main(["bench", "prompt", "retention", "--methods", "nope", "--data", "nq20:1"]) == 2
    assert main(["bench", "prompt", "speed", "--rates", "0"]) == 2
    assert "tokenreduce: error:" in capsys.readouterr().err


def test_hotpotqa_offset_selects_the_held_out_half():
    from tokenreduce.bench.tasks import default_data_dir
    from tokenreduce.prompt.bench_data import hotpotqa

    data = default_data_dir()
    if data is None:
        pytest.skip("shared data folder not available")
    every = hotpotqa(data)
    half = hotpotqa(data, n=50, offset=50)
    assert len(every) == 100 and [e.question for e in half] == [e.question for e in every[50:]]
    assert [e.question for e in hotpotqa(data, n=3)] == [e.question for e in every[:3]]
