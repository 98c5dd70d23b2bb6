"""``tokenreduce tune`` on a tiny random BERT: end to end, the held-out check, the impossible tolerance,
resume without re-measuring, and bad input failing before the model loads."""

from __future__ import annotations

import json
import random
import re

import pytest
from test_sweep_utils import make_tiny_model, tiny_model  # noqa: F401

from tokenreduce.cli import main
from tokenreduce.sweep import tune_data as td
from tokenreduce.sweep.tune import TuneMeasurer

WORDS = ("river stone tower city music bread garden winter light paper engine forest window market cloud silver "
         "train ocean bridge story").split()
FAST = ["--methods", "tome,topk-norm", "--repeats", "1", "--timing-batches", "1", "--batch-size", "8",
        "--refine-methods", "1", "--refine-steps", "1", "--threads", "1", "--no-progress"]


def _passages(n: int = 20) -> list[str]:
    rng = random.Random(0)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(20, 40))) for _ in range(n)]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("tune-data")
    (d / "passages.txt").write_text("\n".join(_passages()) + "\n")
    with open(d / "qa.jsonl", "w") as f:
        for p in _passages():
            f.write(json.dumps({"text": p, "query": " ".join(p.split()[:5])}) + "\n")
    return d


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["tune", *argv])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def steady_clock(monkeypatch):
    """Every reduced run takes half the baseline's time: on a tiny model under load, measured speedups are
    noise, and a pick needs one above 1 (the other tests keep the real clock)."""
    import tokenreduce.bench.text_bench as tb
    from tokenreduce.bench.timing import Timing

    def time_pair(base, other, repeats=5, warmup=1):
        base(), other()
        return Timing(1.0, 1.0, 1.0, 1), Timing(0.5, 0.5, 0.5, 1)

    monkeypatch.setattr(tb, "time_pair", time_pair)


def test_tune_end_to_end_pick_meets_tolerance_on_held_out(tmp_path, tiny_model, data, capsys, steady_clock):  # noqa: F811
    code, out, _ = _run(capsys, str(data / "passages.txt"), "--model", tiny_model, "--max-loss", "1%",
                        "--out", str(tmp_path / "report"), *FAST)
    assert code == 0, out
    assert "Pareto front on the tuning split" in out and "config" in out
    call = re.search(r'Recommended: tokenreduce\.patch\(model, "([\w-]+)", keep=([\d.]+)\)', out)
    assert call, out
    assert call.group(1) in ("tome", "topk-norm") and 0 < float(call.group(2)) < 1
    held = re.search(r"held-out ([\d.]+) vs ([\d.]+) \(loss (-?[\d.]+)%\)", out)
    assert held and float(held.group(3)) <= 1.0  # within --max-loss on data the search never saw
    html = (tmp_path / "report" / "index.html").read_text()
    assert "<svg" in html and "Pareto" in html and call.group(0).split(": ", 1)[1].replace('"', "&quot;") in html
    assert (tmp_path / "report" / "tune.sqlite").is_file()


def test_labeled_data_tunes_on_mrr(tmp_path, tiny_model, data, capsys):  # noqa: F811
    code, out, err = _run(capsys, str(data / "qa.jsonl"), "--model", tiny_model, "--max-loss", "5%",
                          "--store", str(tmp_path / "s.sqlite"), *FAST)
    assert code == 0, err
    assert "(speedup vs mrr;" in out and "queries" in err
    if "tokenreduce.patch(model" in out:
        assert float(re.search(r"held-out [\d.]+ vs [\d.]+ \(loss (-?[\d.]+)%\)", out).group(1)) <= 5.0
    else:
        assert "no reduction" in out


def test_impossible_tolerance_recommends_no_reduction(tmp_path, tiny_model, data, capsys):  # noqa: F811
    code, out, _ = _run(capsys, str(data / "passages.txt"), "--model", tiny_model, "--min-fidelity", "1",
                        "--store", str(tmp_path / "s.sqlite"), *FAST)
    assert code == 0
    assert "Recommended: no reduction" in out and "no measured setting" in out
    assert "tokenreduce.patch(model" not in out


def test_resume_after_interruption_measures_nothing_twice(tmp_path, tiny_model, data, capsys, monkeypatch):  # noqa: F811
    argv = [str(data / "passages.txt"), "--model", tiny_model, "--store", str(tmp_path / "s.sqlite"), *FAST,
            "--methods", "tome", "--refine-steps", "2"]
    calls = []
    real = TuneMeasurer.run

    def counted(self, p):
        calls.append(p.key)
        if len(calls) == 4 and not interrupted:
            interrupted.append(True)
            raise KeyboardInterrupt  # killed while measuring the 4th point: 3 are stored
        return real(self, p)

    interrupted: list[bool] = []
    monkeypatch.setattr(TuneMeasurer, "run", counted)
    with pytest.raises(KeyboardInterrupt):
        main(["tune", *argv])
    capsys.readouterr()
    calls.clear()
    code, out, _ = _run(capsys, *argv)
    assert code == 0
    total = int(re.search(r"measured (\d+) point\(s\), reused (\d+)", out).group(1)) + 3
    assert re.search(r"reused 3 from the store", out) and len(calls) == total - 3
    first_pick = out.split("Recommended:")[1].splitlines()[0]
    calls.clear()
    code, again, _ = _run(capsys, *argv)
    assert code == 0 and calls == []  # everything comes from the store
    assert f"measured 0 point(s), reused {total} from the store" in again
    assert again.split("Recommended:")[1].splitlines()[0] == first_pick  # same search path, same pick


BAD = [
    (["missing.txt"], "data file missing.txt not found"),
    (["empty.txt"], "holds no passages"),
    (["ok.txt", "--max-loss", "150%"], "--max-loss must be in [0, 100%)"),
    (["ok.txt", "--max-loss=-1%"], "--max-loss must be in [0, 100%)"),
    (["ok.txt", "--max-loss", "lots"], "--max-loss must be a number or a percentage"),
    (["ok.txt", "--min-fidelity", "1.5"], "--min-fidelity must be in (0, 1]"),
    (["ok.txt", "--min-fidelity", "0.9", "--max-loss", "1%"], "either --max-loss or --min-fidelity"),
    (["ok.txt", "--metric", "mrr"], "metric 'mrr' is not available for unlabeled"),
    (["ok.txt", "--methods", "tomee"], "unknown method 'tomee'"),
    (["ok.txt", "--methods", "pool"], "needs a token grid"),
    (["ok.txt", "--holdout", "1.2"], "--holdout must be in (0, 1)"),
    (["few.txt"], "each split needs at least 2 passages"),
    (["bad.jsonl"], "bad.jsonl:2: not valid JSON"),
    (["notext.jsonl"], "expected an object with a string field 'text'"),
    (["ok.txt", "--repeats", "0"], "--repeats must be >= 1"),
    (["ok.txt", "--model", "no-such-folder"], "model folder no-such-folder not found"),
]


@pytest.mark.parametrize("argv, msg", BAD)
def test_bad_input_fails_before_loading_the_model(tmp_path, monkeypatch, capsys, argv, msg):
    import tokenreduce.bench.encoder as enc

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(enc, "load_text_encoder", lambda *a, **k: pytest.fail("model loaded"))
    (tmp_path / "empty.txt").write_text("\n  \n")
    (tmp_path / "ok.txt").write_text("\n".join(_passages(10)))
    (tmp_path / "few.txt").write_text("one passage\nanother one\n")
    (tmp_path / "bad.jsonl").write_text('{"text": "a"}\n{"text": \n')
    (tmp_path / "notext.jsonl").write_text('{"body": "a"}\n')
    code, out, err = _run(capsys, *argv)
    assert code == 2 and out == ""
    assert err.startswith("tokenreduce: error:") and msg in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.glob("*.sqlite*"))  # nothing created


def test_tolerance_and_split_units():
    tol = td.make_tolerance("1%", None, None, labeled=True)
    assert tol.metric == "mrr" and tol.max_loss == pytest.approx(0.01)
    assert tol.meets(0.991, 1.0) and not tol.meets(0.989, 1.0)
    assert td.make_tolerance(None, "0.99", None, labeled=False).meets(0.995, 1.0)
    recs = [td.Record(f"p{i}") for i in range(10)]
    tune, held = td.split(recs, 0.3, seed=0)
    assert len(held) == 3 and len(tune) == 7 and not set(tune) & set(held)
    assert td.split(recs, 0.3, seed=0) == (tune, held)
    task = td.to_task("tune", [td.Record("a", ("q1", "q2")), td.Record("b")], "x")
    assert task.queries == ["q1", "q2"] and task.gold == [0, 0] and task.passages == ["a", "b"]
