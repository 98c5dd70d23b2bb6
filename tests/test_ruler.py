"""The RULER-style suite: deterministic generators at the target length, answers in the context, RULER's
scoring, and the press runner end to end on a tiny random Llama (keep 1.0 = the full cache exactly)."""

from __future__ import annotations

import json
import re
from collections import Counter
from types import SimpleNamespace

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

    def __call__(self, text: str, add_special_tokens: bool = True) -> SimpleNamespace:
        return SimpleNamespace(input_ids=self.encode(text, add_special_tokens))


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
    assert main(["--resume"]) == 2
    assert "error" in capsys.readouterr().err


class EosCharTokenizer(CharTokenizer):
    """CharTokenizer with an end-of-sequence id, so rows of a batch stop at different steps."""

    def __init__(self, eos: int):
        self.eos_token_id = eos


def _answers_of(records):
    return [(r["sample"], r["press"], r["keep"], r["mode"], r["prediction"], r["decoded"], r["score"]) for r in records]


@needs_data
@pytest.mark.parametrize("query_aware", [False, True])
def test_batched_answers_equal_one_by_one(query_aware):
    """Presses at one keep leave caches of one shape: decoded as one batch (each row stopping at its own EOS)
    they give the same answers, token counts and scores as one by one."""
    from kv_models import tiny_lm

    from tokenreduce.bench.ruler_run import run_suite
    from tokenreduce.kv import make_press

    model, tok = tiny_lm(), CharTokenizer()
    samples = make_suite(tok, 420, 1, ["niah_single", "vt"], DATA, seed=1)
    names = ("streaming_llm", "snapkv", "tova", "keydiff", "key_norm", "random", "adakv", "pyramidkv")
    presses = [make_press(n, keep=k) for n in names for k in (0.5, 0.25)]
    budget = {"niah_single": 6, "vt": 6}
    first = run_suite(model, tok, samples, presses, new_tokens=budget, query_aware=query_aware, batch=False)
    # an EOS that some rows emit early and others never: rows of one batch stop at different steps
    eos = tok.encode(first[1]["prediction"])[1]
    tok = EosCharTokenizer(eos)
    alone = run_suite(model, tok, samples, presses, new_tokens=budget, query_aware=query_aware, batch=False)
    batched = run_suite(model, tok, samples, presses, new_tokens=budget, query_aware=query_aware, batch=True)
    assert _answers_of(batched) == _answers_of(alone)
    in_batches = [r["decoded"] for r in batched if r["batch"] > 1]
    assert len(set(in_batches)) > 1 and min(in_batches) < 6  # rows of a batch left it at different steps
    assert max(r["batch"] for r in batched) >= 5  # the uniform presses at one keep share a batch
    assert all(r["batch"] == 1 for r in batched if r["press"] in ("full", "adakv", "pyramidkv"))


@needs_data
def test_kvzip_scores_once_per_sample_same_selection(monkeypatch):
    """KVzip's reconstruction scores do not depend on keep: one scoring pass per sample serves every keep,
    and the compressed caches equal those scored per keep."""
    import torch
    from kv_models import tiny_lm

    from tokenreduce.bench import ruler_run
    from tokenreduce.kv import cache as kvc
    from tokenreduce.kv import make_press
    from tokenreduce.kv.bench import capture_prefill, press_cache

    model, tok = tiny_lm(), CharTokenizer()
    samples = make_suite(tok, 420, 2, ["niah_single"], DATA, seed=2)
    presses = [make_press("kvzip", keep=k) for k in (0.5, 0.25, 0.1)]
    calls = []
    real = ruler_run.reconstruction_scores
    monkeypatch.setattr(ruler_run, "reconstruction_scores", lambda *a, **k: calls.append(1) or real(*a, **k))
    records = ruler_run.run_suite(model, tok, samples, presses, new_tokens={"niah_single": 4})
    assert len(calls) == len(samples) and len(records) == len(samples) * 4
    pre = capture_prefill(model, torch.tensor([tok.encode(samples[0].context)]))
    memo: dict = {}
    for p in presses:
        ours, ref = ruler_run._pressed(model, pre, p, tok, memo), press_cache(model, pre, p, tok)
        for i in range(kvc.n_layers(ref)):
            a, b = kvc.layer_kv(ours, i), kvc.layer_kv(ref, i)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert len(memo) == 1


@needs_data
@pytest.mark.parametrize("name", ["streaming_llm", "snapkv", "tova", "expected_attention", "keydiff", "key_norm",
                                  "pyramidkv", "adakv", "qfilters", "chunkkv", "random"])
def test_scores_shared_across_keeps_same_caches(name):
    """Every press the suite runs scores a prefill the same at every keep: scored once (the first keep) and
    reused, the compressed caches equal those pressed from scratch."""
    import torch
    from kv_models import tiny_lm

    from tokenreduce.bench import ruler_run
    from tokenreduce.kv import cache as kvc
    from tokenreduce.kv import make_press
    from tokenreduce.kv.bench import capture_prefill, press_cache

    model, tok = tiny_lm(), CharTokenizer()
    pre = capture_prefill(model, torch.tensor([tok.encode(make_suite(tok, 420, 1, ["vt"], DATA, seed=5)[0].context)]))
    memo: dict = {}
    for k in (0.5, 0.25, 0.1):
        p = make_press(name, keep=k)
        ours, ref = ruler_run._pressed(model, pre, p, tok, memo), press_cache(model, pre, p, tok)
        assert kvc.get_state(ours).real.equal(kvc.get_state(ref).real)
        for i in range(kvc.n_layers(ref)):
            a, b = kvc.layer_kv(ours, i), kvc.layer_kv(ref, i)
            assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]), (name, k, i)
    assert len(memo) == kvc.n_layers(pre.cache)  # one score per layer, computed at the first keep


@needs_data
def test_both_modes_are_the_two_single_mode_runs():
    """``both_modes``: each sample's agnostic then aware records, equal to the two single-mode runs (KVzip,
    query-agnostic by design, only in the first)."""
    from kv_models import tiny_lm

    from tokenreduce.bench.ruler_run import run_suite
    from tokenreduce.kv import make_press

    model, tok = tiny_lm(), CharTokenizer()
    samples = make_suite(tok, 420, 1, ["niah_single", "vt"], DATA, seed=4)
    presses = [make_press("snapkv", keep=0.5), make_press("kvzip", keep=0.5)]
    kw = dict(new_tokens={"niah_single": 3, "vt": 3})
    both = run_suite(model, tok, samples, presses, both_modes=True, **kw)
    single = [*run_suite(model, tok, samples[:1], presses, **kw),
              *run_suite(model, tok, samples[:1], presses, query_aware=True, **kw)]
    assert _answers_of(both[:5]) == _answers_of(single)
    resumed = run_suite(model, tok, samples, presses, both_modes=True, skip={0}, **kw)  # --resume after sample 0
    assert _answers_of(resumed) == _answers_of(both[5:])
    assert [(r["mode"], r["press"]) for r in both[:5]] == [
        ("agnostic", "full"), ("agnostic", "snapkv"), ("agnostic", "kvzip"), ("aware", "full"), ("aware", "snapkv")]
