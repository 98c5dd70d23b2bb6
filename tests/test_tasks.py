"""Tests for tokenreduce.bench.tasks: stdlib task construction rules, the real data files, errors."""

from __future__ import annotations

import gzip
import json
import random
import textwrap
from pathlib import Path

import pytest

import tokenreduce.bench.tasks as tasks
from tokenreduce.bench.tasks import (
    DATA_ENV_VAR,
    RetrievalTask,
    STSTask,
    default_data_dir,
    load_task,
    nq_retrieval,
    stdlib_code_retrieval,
    stsb,
)

# ---------------------------------------------------------------------------------------------- stdlib-code


@pytest.fixture(scope="module")
def stdlib_full() -> RetrievalTask:
    return stdlib_code_retrieval(max_items=None)


def test_stdlib_deterministic(stdlib_full: RetrievalTask) -> None:
    assert stdlib_code_retrieval(max_items=None) == stdlib_full


def test_stdlib_sample_is_seeded_subset(stdlib_full: RetrievalTask) -> None:
    task = stdlib_code_retrieval()  # max_items=1000, seed=0
    keep = sorted(random.Random(0).sample(range(len(stdlib_full)), 1000))
    assert task.queries == [stdlib_full.queries[i] for i in keep]
    assert task.passages == [stdlib_full.passages[i] for i in keep]
    assert task.gold == list(range(1000))
    assert task.name == "stdlib-code" and "python stdlib" in task.source


def test_stdlib_items_follow_rules(stdlib_full: RetrievalTask) -> None:
    task = stdlib_full
    assert 1000 < len(task) < 20000
    assert task.gold == list(range(len(task)))
    assert len(task.passages) == len(task.queries)
    assert len(set(task.queries)) == len(task.queries)
    assert len(set(task.passages)) == len(task.passages)
    for query, passage in zip(task.queries, task.passages, strict=True):
        assert len(query.split()) >= 6 and query == " ".join(query.split())
        assert len(passage) <= 1500
        assert sum(1 for line in passage.splitlines() if line.strip()) >= 3
        assert passage.startswith(("def ", "async def "))
        assert query not in " ".join(passage.split())


def test_stdlib_bad_max_items() -> None:
    with pytest.raises(ValueError, match="max_items"):
        stdlib_code_retrieval(max_items=0)


def test_code_pairs_rules() -> None:
    source = textwrap.dedent('''
        import functools

        class A:
            @functools.cache
            def method(self, x):
                """Compute the answer to the question for x.

                Details that are not part of the query.
                """
                y = x + 1
                z = y * 2
                return z

            def short(self):
                """This one has far too few lines of code."""
                return 1

            def few_words(self):
                """Too short."""
                a = 1
                b = 2
                return a + b

        def outer(a):
            """Outer function docstring with enough words here."""
            def inner(b):
                """Inner docstring that must not leak into outer."""
                c = b
                d = c
                return d
            return inner(a)

        def oneline(): "Docstring on the def line is skipped entirely."; return 1
        ''')
    pairs = list(tasks._code_pairs(source))
    by_query = {q: (line, p) for line, q, p in pairs}
    assert set(by_query) == {
        "Compute the answer to the question for x.",
        "Outer function docstring with enough words here.",
        "Inner docstring that must not leak into outer.",
    }
    line, passage = by_query["Compute the answer to the question for x."]
    assert line == 6
    # no decorator, no docstring, dedented
    assert passage == "def method(self, x):\n    y = x + 1\n    z = y * 2\n    return z"
    outer = by_query["Outer function docstring with enough words here."][1]
    assert "docstring" not in outer.lower() and "def inner(b):" in outer


def test_trim_at_line_break() -> None:
    text = "\n".join(["x" * 10] * 300)
    cut = tasks._trim(text, 1500)
    assert len(cut) <= 1500 and cut.endswith("x" * 10) and len(cut.splitlines()) == 136
    assert tasks._trim("y" * 2000, 1500) == "y" * 1500
    assert tasks._trim("short", 1500) == "short"


# ---------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def data_dir() -> Path:
    found = default_data_dir()
    if found is None or not found.is_dir():
        pytest.skip(f"shared data directory not found (set ${DATA_ENV_VAR})")
    return found


def test_nq(data_dir: Path) -> None:
    task = nq_retrieval(data_dir)
    assert task.name == "nq"
    assert len(task.queries) == 2655 == len(task.gold)
    assert task.queries[0] == "who got the first nobel prize in physics"
    assert task.passages[task.gold[0]].startswith("List of Nobel laureates in Physics\nThe first Nobel Prize")
    assert len(set(task.passages)) == len(task.passages) <= 2655
    assert set(task.gold) == set(range(len(task.passages)))  # every passage is some question's gold
    # Unique passages appear in file order: first occurrences of gold are increasing.
    firsts = list(dict.fromkeys(task.gold))
    assert firsts == sorted(firsts)


def test_nq_max_items(data_dir: Path) -> None:
    full = nq_retrieval(data_dir)
    task = nq_retrieval(data_dir, max_items=50)
    assert task.queries == full.queries[:50]
    assert set(task.gold) == set(range(len(task.passages)))
    assert [task.passages[g] for g in task.gold] == [full.passages[g] for g in full.gold[:50]]
    assert load_task("nq:50", data_dir) == task


def test_stsb_en_test(data_dir: Path) -> None:
    task = stsb(data_dir)
    assert task.name == "stsb-en"
    assert len(task) == 1379 == len(task.sentences1) == len(task.sentences2)
    assert (task.sentences1[0], task.sentences2[0], task.scores[0]) == (
        "A girl is styling her hair.",
        "A girl is brushing her hair.",
        2.5,
    )
    assert all(0.0 <= s <= 5.0 for s in task.scores)
    assert load_task("stsb", data_dir) == task


def test_stsb_specs(data_dir: Path) -> None:
    de = load_task("stsb-de", data_dir)
    assert isinstance(de, STSTask) and de.name == "stsb-de" and len(de) == 1379
    dev = load_task("stsb-en-dev", data_dir)
    assert isinstance(dev, STSTask) and dev.name == "stsb-en" and len(dev) == 1500
    assert dev.source.endswith("stsb-en-dev.csv")


# ---------------------------------------------------------------------------------------------- errors


def test_load_task_unknown_specs() -> None:
    for spec in ("bogus", "stsb-xx", "stsb-en-val", "stsb-en-test-x", "stsb:5", "nq:abc", "nq:0", "stdlib-code:-1"):
        with pytest.raises(ValueError, match="valid specs: stdlib-code") as info:
            load_task(spec)
        assert repr(spec) in str(info.value)


def test_load_task_stdlib_spec(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int | None] = []

    def fake(max_items: int | None = 1000, seed: int = 0) -> None:
        calls.append(max_items)

    monkeypatch.setattr(tasks, "stdlib_code_retrieval", fake)
    load_task("stdlib-code")
    load_task("stdlib-code:25")
    assert calls == [1000, 25]


def test_missing_data_dir_errors(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(FileNotFoundError, match=DATA_ENV_VAR) as info:
        load_task("nq", tmp_path)
    assert str(tmp_path / "lost_in_the_middle" / "qa_data" / "nq-open-oracle.jsonl.gz") in str(info.value)
    with pytest.raises(FileNotFoundError, match="stsb-fr-dev.csv"):
        load_task("stsb-fr-dev", tmp_path)
    monkeypatch.setattr(tasks, "default_data_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match=DATA_ENV_VAR):
        load_task("stsb")


def test_default_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DATA_ENV_VAR, str(tmp_path / "mine"))
    assert default_data_dir() == tmp_path / "mine"
    monkeypatch.delenv(DATA_ENV_VAR)
    (tmp_path / "shared" / "data").mkdir(parents=True)
    (tmp_path / "repo" / "sub").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "repo" / "sub")
    assert default_data_dir() == (tmp_path / "shared" / "data").resolve()


def _write_stsb(root: Path, text: str) -> Path:
    folder = root / "stsb_multi_mt" / "data"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "stsb-en-test.csv").write_text(text, encoding="utf-8")
    return root


def test_stsb_bad_files(tmp_path: Path) -> None:
    root = _write_stsb(tmp_path, 'a,b,1.0\n"quoted, comma",b,2\n')
    task = stsb(root)
    assert task.sentences1 == ["a", "quoted, comma"] and task.scores == [1.0, 2.0]
    _write_stsb(tmp_path, "a,b,1.0\na,b\n")
    with pytest.raises(ValueError, match=r"stsb-en-test.csv:2: expected 3 columns"):
        stsb(root)
    _write_stsb(tmp_path, "a,b,high\n")
    with pytest.raises(ValueError, match="not a number"):
        stsb(root)
    _write_stsb(tmp_path, "a,b,7\n")
    with pytest.raises(ValueError, match=r"outside \[0, 5\]"):
        stsb(root)
    _write_stsb(tmp_path, "")
    with pytest.raises(ValueError, match="no rows"):
        stsb(root)


def _write_nq(root: Path, records: list[object]) -> Path:
    path = root / "lost_in_the_middle" / "qa_data" / "nq-open-oracle.jsonl.gz"
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        for rec in records:
            fh.write((rec if isinstance(rec, str) else json.dumps(rec)) + "\n")
    return root


def test_nq_synthetic_and_bad_files(tmp_path: Path) -> None:
    def rec(q: str, title: str, gold: bool = True) -> dict[str, object]:
        return {"question": q, "answers": ["x"], "ctxs": [{"title": title, "text": "body", "isgold": gold}]}

    root = _write_nq(tmp_path, [rec("q1", "A"), rec("q2", "B"), rec("q3", "A")])
    task = nq_retrieval(root)
    assert task.passages == ["A\nbody", "B\nbody"] and task.gold == [0, 1, 0]
    assert nq_retrieval(root, max_items=1).passages == ["A\nbody"]
    _write_nq(tmp_path, [rec("q1", "A"), "{not json"])
    with pytest.raises(ValueError, match=r"jsonl.gz:2: not valid JSON"):
        nq_retrieval(root)
    _write_nq(tmp_path, [rec("q1", "A", gold=False)])
    with pytest.raises(ValueError, match="isgold"):
        nq_retrieval(root)
    _write_nq(tmp_path, [{"query": "q1", "ctxs": []}])
    with pytest.raises(ValueError, match="'question'"):
        nq_retrieval(root)
