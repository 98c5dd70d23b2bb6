"""The RULER-style suite: deterministic generators at the target length, answers in the context, RULER's
scoring, and the press runner end to end on a tiny random Llama (keep 1.0 = the full cache exactly)."""

from __future__ import annotations

import json
import re
from collections import Counter

import pytest

from tokenreduce.bench.ruler import TASKS, make_suite, score, token_counter
from tokenreduce.bench.tasks import default_data_dir

DATA = default_data_dir()
needs_data = pytest.mark.skipif(
    DATA is None or not (DATA / "needle_haystack_paul_graham").is_dir() or not (DATA / "tokenizers" / "gpt2").is_dir(),
    reason="shared data (essays, NQ, gpt2 tokenizer) not found")


@pytest.fixture(scope="module")
def gpt2():
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers.models import BPE

    d = DATA / "tokenizers" / "gpt2"
    tok = Tokenizer(BPE.from_file(str(d / "vocab.json"), str(d / "merges.txt")))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    return tok


@pytest.fixture(scope="module")
def suite(gpt2):
    return make_suite(gpt2, 1024, 2, TASKS, DATA, seed=3)


class CharTokenizer:
    """Printable ASCII -> ids 1..95 (anything else -> 96): fits the tiny models' 97-token vocabulary."""

    eos_token_id = None

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        return [ord(c) - 31 if 32 <= ord(c) <= 126 else 96 for c in text]

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return "".join(chr(i + 31) if 1 <= i <= 95 else "?" for i in ids)


@needs_data
def test_generators_are_deterministic(gpt2, suite):
    again = make_suite(gpt2, 1024, 2, TASKS, DATA, seed=3)
    assert [(s.context, s.question, s.answers) for s in again] == [(s.context, s.question, s.answers) for s in suite]
    other = make_suite(gpt2, 1024, 1, ["niah_single"], DATA, seed=4)[0]
    assert other.context != suite[0].context
    assert [s.task for s in suite] == [*TASKS, *TASKS]  # round-robin: a run cut short covers every task


@needs_data
@pytest.mark.parametrize("length", [512, 1024])
def test_samples_hit_the_target_length(gpt2, length):
    count = token_counter(gpt2)
    for s in make_suite(gpt2, length, 1, TASKS, DATA, seed=0):
        n = count(s.context + s.question)
        assert 0.9 * length <= n <= length, (s.task, n)


@needs_data
def test_answers_are_in_the_context(suite):
    for s in suite:
        if s.task == "cwe":
            counts = Counter(re.findall(r"^\d+\. (\w+)$", s.context, flags=re.M))
            least_common = min(counts[w] for w in s.answers)
            assert least_common > max(c for w, c in counts.items() if w not in s.answers)
            assert len(s.answers) == 10
        elif s.task == "vt":
            value = s.meta["value"]
            assert f"VAR {s.answers[0]} = {value}." in s.context
            for a, b in zip(s.answers, s.answers[1:]):
                assert f"VAR {b} = VAR {a}." in s.context
                assert s.context.index(f"VAR {a} ") < s.context.index(f"VAR {b} =")
        else:
            assert all(a in s.context for a in s.answers) or s.task == "qa"
            if s.task.startswith("niah"):
                for key, value in s.meta["needles"]:
                    assert f"The special magic number for {key} is: {value}." in s.context
                    if value in s.answers:
                        assert key in s.question
                want = {"niah_single": 1, "niah_multikey": 1, "niah_multivalue": 4, "niah_multiquery": 2}[s.task]
                assert len(s.answers) == want
            else:  # qa: the gold passage's answer text is there (NQ answers may be paraphrased: check the title)
                assert s.metric == "part"


def test_scoring_matches_ruler():
    assert score("The number is 1234567.", ["1234567"]) == 1.0
    assert score("The numbers are 1 and 2", ["1", "3"]) == 0.5
    assert score("APPLE, pear", ["apple", "pear", "fig", "kiwi"]) == 0.5
    assert score("nothing here", ["apple"]) == 0.0
    assert score("It was Paris", ["London", "paris"], "part") == 1.0
    assert score("It was Rome", ["London", "paris"], "part") == 0.0
    with pytest.raises(ValueError, match="metric"):
        score("x", ["x"], "exact")
    with pytest.raises(ValueError, match="answers"):
        score("x", [])


@needs_data
def test_bad_suite_parameters_refused(gpt2):
    with pytest.raises(ValueError, match="unknown RULER task"):
        make_suite(gpt2, 1024, 1, ["niah"], DATA)
    with pytest.raises(ValueError, match="length"):
        make_suite(gpt2, 32, 1, ["vt"], DATA)
    with pytest.raises(ValueError, match="too short"):
        make_suite(gpt2, 80, 1, ["qa"], DATA)


@needs_data
def test_runner_end_to_end_keep_one_is_the_full_cache(tmp_path):
    from kv_models import tiny_lm

    from tokenreduce.bench.report import format_table
    from tokenreduce.bench.ruler_run import aggregate, columns, plot, run_suite
    from tokenreduce.kv import make_press

    tok = CharTokenizer()
    samples = make_suite(tok, 420, 1, ["niah_single", "vt"], DATA, seed=0)
    presses = [make_press("snapkv", keep=1.0), make_press("tova", keep=0.5)]
    records = run_suite(tiny_lm(), tok, samples, presses, new_tokens={"niah_single": 4, "vt": 4})
    by = {(r["sample"], r["press"], r["keep"]): r for r in records}
    for i in range(len(samples)):
        assert by[(i, "snapkv", 1.0)]["prediction"] == by[(i, "full", 1.0)]["prediction"]
        assert len(by[(i, "full", 1.0)]["prediction"]) == 4
        assert by[(i, "full", 1.0)]["decoded"] == 4 and by[(i, "full", 1.0)]["seconds"] > 0
    rows = aggregate(records)
    assert rows[0]["press"] == "full" and rows[0]["vs_full"] in (1.0, None)
    assert {(r["press"], r["keep"]) for r in rows} == {("full", 1.0), ("snapkv", 1.0), ("tova", 0.5)}
    assert all(r["samples"] == 2 for r in rows)
    assert "niah_single" in format_table(rows, columns(rows))
    png = plot(rows, tmp_path / "r.png")
    assert png.read_bytes()[:4] == b"\x89PNG"
    # a partial run's records -> the same table, JSON/CSV/PNG through the CLI
    from tokenreduce.bench.ruler_cli import main

    (tmp_path / "p.records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert main(["--records", str(tmp_path / "p.records.jsonl"), "--out", str(tmp_path / "p")]) == 0
    assert json.loads((tmp_path / "p.json").read_text())["rows"] == json.loads(json.dumps(rows))
    assert (tmp_path / "p.png").exists() and (tmp_path / "p.csv").exists()


def test_cli_refuses_bad_arguments(capsys):
    from tokenreduce.bench.ruler_cli import main

    assert main(["--tasks", "bogus"]) == 2
    assert main(["--keep", "1.5"]) == 2
    assert main(["--presses", "nope"]) == 2
    assert main(["--threads", "0"]) == 2
    assert "error" in capsys.readouterr().err
