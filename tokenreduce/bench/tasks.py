"""Evaluation tasks: small, real, reproducible data sets for measuring what token reduction costs.

Each loader returns a plain frozen dataclass holding the raw texts plus provenance, so a benchmark can
embed them with any model.  Nothing is downloaded and nothing is cached on disk: ``stdlib-code`` is built
from the interpreter's own standard library, the others read files under a local data directory
(``$TOKENREDUCE_DATA`` or a ``shared/data`` folder found by walking up from the working directory).
"""

from __future__ import annotations

import ast
import csv
import gzip
import json
import math
import os
import random
import re
import sys
import sysconfig
import tokenize
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "DATA_ENV_VAR",
    "RetrievalTask",
    "STSTask",
    "TASK_SPECS",
    "default_data_dir",
    "load_task",
    "nq_retrieval",
    "stdlib_code_retrieval",
    "stsb",
]

DATA_ENV_VAR = "TOKENREDUCE_DATA"
STSB_LANGS = ("de", "en", "es", "fr", "it", "ja", "nl", "pl", "pt", "ru", "zh")
STSB_SPLITS = ("train", "dev", "test")
TASK_SPECS = (
    "stdlib-code",
    "stdlib-code:N",
    "nq",
    "nq:N",
    "stsb",
    "stsb-<lang>",
    "stsb-<lang>-<split>",
)
NQ_RELPATH = Path("lost_in_the_middle", "qa_data", "nq-open-oracle.jsonl.gz")

# stdlib_code_retrieval settings (see its docstring).
_SKIP_DIRS = frozenset({"site-packages", "dist-packages", "test", "tests", "idlelib", "lib2to3", "__pycache__"})
_MIN_QUERY_WORDS = 6
_MIN_PASSAGE_LINES = 3
_MAX_PASSAGE_CHARS = 1500
_FUNC_NODES = (ast.FunctionDef, ast.AsyncFunctionDef)
_DOC_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


@dataclass(frozen=True)
class RetrievalTask:
    """Queries to be matched against a passage pool; ``gold[i]`` indexes the passage for ``queries[i]``."""

    name: str
    queries: list[str]
    passages: list[str]
    gold: list[int]
    source: str

    def __len__(self) -> int:
        return len(self.queries)


@dataclass(frozen=True)
class STSTask:
    """Sentence pairs with graded human similarity ``scores`` (STS-B: 0 = unrelated, 5 = equivalent)."""

    name: str
    sentences1: list[str]
    sentences2: list[str]
    scores: list[float]
    source: str

    def __len__(self) -> int:
        return len(self.scores)


# --------------------------------------------------------------------------------------------------------
# data directory


def default_data_dir() -> Path | None:
    """Locate the shared data directory without any configuration, or return ``None``.

    ``$TOKENREDUCE_DATA`` wins when set (returned even if it does not exist, so the loaders' error names
    the path the user chose).  Otherwise the first ``shared/data`` directory found walking up from the
    current working directory, then from this repository's root; this finds ``../shared/data`` next to
    a checkout as well as ``./shared/data`` inside one.
    """
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser()
    repo_root = Path(__file__).resolve().parents[2]
    for start in (Path.cwd().resolve(), repo_root):
        for folder in (start, *start.parents):
            candidate = folder / "shared" / "data"
            if candidate.is_dir():
                return candidate
    return None


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(
            f"{what}: expected file {path} not found (set ${DATA_ENV_VAR} to the data directory that "
            f"contains {path.parent.name}/..., or pass data_dir)"
        )
    return path


# --------------------------------------------------------------------------------------------------------
# stdlib docstring -> code retrieval


def _stdlib_files(root: Path) -> list[Path]:
    """All ``.py`` files under ``root`` outside the skipped folders, sorted by relative posix path."""
    found: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS]
        found.extend(Path(dirpath, f) for f in filenames if f.endswith(".py"))
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def _split_lines(source: str) -> list[str]:
    """Split like the parser counts lines (``\\n``, ``\\r\\n``, ``\\r`` only; never form feeds)."""
    return re.split(r"\r\n|\r|\n", source)


def _first_paragraph(doc: str) -> str:
    return " ".join(re.split(r"\n\s*\n", doc.strip(), maxsplit=1)[0].split())


def _iter_defs(stmts: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Yield every function/class definition in ``stmts``, nested ones included.

    Definitions are statements, so only statement blocks need visiting: much cheaper than ``ast.walk``,
    which also descends into every expression.
    """
    for stmt in stmts:
        if isinstance(stmt, _DOC_NODES):
            yield stmt
        for field in ("body", "orelse", "finalbody"):
            block = getattr(stmt, field, None)
            if isinstance(block, list):
                yield from _iter_defs(block)
        for sub in (*getattr(stmt, "handlers", ()), *getattr(stmt, "cases", ())):
            yield from _iter_defs(sub.body)


def _docstring_expr(node: ast.AST) -> ast.Expr | None:
    body = getattr(node, "body", None)
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(body[0].value, ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        return body[0]
    return None


def _docstring_lines(expr: ast.Expr, lines: list[str]) -> range | None:
    """0-based line range occupied by a docstring statement, or None if it shares a line with other code."""
    assert expr.end_lineno is not None and expr.end_col_offset is not None
    first = lines[expr.lineno - 1].encode()
    last = lines[expr.end_lineno - 1].encode()
    before, after = first[: expr.col_offset], last[expr.end_col_offset :].strip()
    if before.strip() or (after and not after.startswith(b"#")):
        return None
    return range(expr.lineno - 1, expr.end_lineno)


def _trim(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, at a line break when there is one."""
    if len(text) <= limit:
        return text
    cut = text.rfind("\n", 0, limit + 1)
    return (text[:cut] if cut > 0 else text[:limit]).rstrip()


def _code_pairs(source: str) -> Iterator[tuple[int, str, str]]:
    """Yield ``(lineno, query, passage)`` for every usable function/method in one module's source."""
    tree = ast.parse(source)
    lines = _split_lines(source)
    defs = _iter_defs(tree.body)
    funcs = sorted((n for n in defs if isinstance(n, _FUNC_NODES)), key=lambda n: (n.lineno, n.col_offset))
    for fn in funcs:
        doc = ast.get_docstring(fn, clean=True)
        if not doc:
            continue
        query = _first_paragraph(doc)
        if len(query.split()) < _MIN_QUERY_WORDS:
            continue
        # Drop the function's own docstring and those of anything nested in it, so that no query text
        # (this one or a nested function's) appears verbatim in a passage.
        drop: set[int] = set()
        clean = True
        for sub in (fn, *_iter_defs(fn.body)):
            expr = _docstring_expr(sub)
            if expr is None:
                continue
            span = _docstring_lines(expr, lines)
            if span is None:  # docstring shares a line with code (e.g. `def f(): "doc"`)
                clean = False
                break
            drop.update(span)
        if not clean:
            continue
        assert fn.end_lineno is not None
        # The lines of ast.get_source_segment(source, fn) (computed once per file, not per call) minus the
        # dropped ones, dedented by the def line's indentation; lines indented less (inside multi-line
        # strings) are kept as they are.
        def_line = lines[fn.lineno - 1]
        indent = def_line[: len(def_line) - len(def_line.lstrip())]
        kept = [lines[i] for i in range(fn.lineno - 1, fn.end_lineno) if i not in drop]
        body = "\n".join(line.removeprefix(indent).rstrip() for line in kept).strip("\n")
        if sum(1 for line in body.splitlines() if line.strip()) < _MIN_PASSAGE_LINES:
            continue
        if query in " ".join(body.split()):  # e.g. a docstring that just repeats the signature: trivial
            continue
        yield fn.lineno, query, _trim(body, _MAX_PASSAGE_CHARS)


def stdlib_code_retrieval(max_items: int | None = 1000, seed: int = 0) -> RetrievalTask:
    """Docstring -> code retrieval built from the running interpreter's standard library.

    A real, license-free task that is always available offline.  Query: the first paragraph of a
    function's or method's docstring (>= 6 words, whitespace-normalized).  Passage: that function's source
    (no decorators, as ``ast.get_source_segment``) without its docstring or nested ones, dedented, cut at a
    line break to <= 1500 characters.  Items with < 3 non-empty passage lines or whose passage contains
    the query verbatim are skipped.  Files are visited in sorted path order, functions by line, and an
    item whose query or passage was already seen is dropped.  ``max_items`` then keeps a
    ``random.Random(seed)`` sample in that order; ``gold`` is the identity.  Deterministic for a given
    Python installation; nothing is cached.
    """
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be a positive int or None, got {max_items!r}")
    root = Path(sysconfig.get_paths()["stdlib"])
    queries: list[str] = []
    passages: list[str] = []
    seen_q: set[str] = set()
    seen_p: set[str] = set()
    for path in _stdlib_files(root):
        try:
            with tokenize.open(path) as fh:
                source = fh.read()
            pairs = list(_code_pairs(source))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        for _, query, passage in pairs:
            if query in seen_q or passage in seen_p:
                continue
            seen_q.add(query)
            seen_p.add(passage)
            queries.append(query)
            passages.append(passage)
    if max_items is not None and max_items < len(queries):
        keep = sorted(random.Random(seed).sample(range(len(queries)), max_items))
        queries = [queries[i] for i in keep]
        passages = [passages[i] for i in keep]
    return RetrievalTask(
        name="stdlib-code",
        queries=queries,
        passages=passages,
        gold=list(range(len(queries))),
        source=f"python stdlib {sys.version.split()[0]} ({root})",
    )


# --------------------------------------------------------------------------------------------------------
# Natural Questions (lost-in-the-middle oracle file)


def nq_retrieval(data_dir: str | Path, max_items: int | None = None) -> RetrievalTask:
    """NQ-open question -> gold Wikipedia passage retrieval (lost-in-the-middle ``nq-open-oracle`` file).

    Query = question; passage = ``f"{title}\\n{text}"`` of the context marked ``isgold`` (the only one in
    the oracle file).  Questions sharing a gold passage point to one copy in the de-duplicated passage
    pool, kept in file order.  ``max_items`` keeps the first N questions and only their passages.
    """
    if max_items is not None and max_items < 1:
        raise ValueError(f"max_items must be a positive int or None, got {max_items!r}")
    path = _require_file(Path(data_dir) / NQ_RELPATH, "nq")
    queries: list[str] = []
    passages: list[str] = []
    gold: list[int] = []
    index: dict[str, int] = {}
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if max_items is not None and len(queries) >= max_items:
                break
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err})") from err
            question, ctxs = record.get("question"), record.get("ctxs")
            if not isinstance(question, str) or not isinstance(ctxs, list):
                raise ValueError(f"{where}: expected keys 'question' (str) and 'ctxs' (list)")
            golds = [c for c in ctxs if isinstance(c, dict) and c.get("isgold")]
            if not golds:
                raise ValueError(f"{where}: no context with isgold=true")
            ctx = golds[0]
            if not isinstance(ctx.get("title"), str) or not isinstance(ctx.get("text"), str):
                raise ValueError(f"{where}: gold context lacks 'title'/'text' strings")
            passage = f"{ctx['title']}\n{ctx['text']}"
            if passage not in index:
                index[passage] = len(passages)
                passages.append(passage)
            queries.append(question)
            gold.append(index[passage])
    if not queries:
        raise ValueError(f"{path}: no questions found")
    return RetrievalTask(name="nq", queries=queries, passages=passages, gold=gold, source=str(path))


# --------------------------------------------------------------------------------------------------------
# STS benchmark (stsb_multi_mt)


def stsb(data_dir: str | Path, split: str = "test", lang: str = "en") -> STSTask:
    """STS-B sentence pairs with 0-5 similarity scores, from the ``stsb_multi_mt`` CSV files.

    Reads ``data_dir/stsb_multi_mt/data/stsb-{lang}-{split}.csv``: no header, columns
    sentence1, sentence2, score, excel dialect.  Rows with a wrong column count or a score outside
    [0, 5] raise ``ValueError`` naming the line, rather than being silently skipped.
    """
    path = _require_file(Path(data_dir) / "stsb_multi_mt" / "data" / f"stsb-{lang}-{split}.csv", "stsb")
    s1: list[str] = []
    s2: list[str] = []
    scores: list[float] = []
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.reader(fh, dialect="excel")
        for row in reader:
            where = f"{path}:{reader.line_num}"
            if not row:
                continue
            if len(row) != 3:
                raise ValueError(f"{where}: expected 3 columns (sentence1, sentence2, score), got {len(row)}")
            try:
                score = float(row[2])
            except ValueError as err:
                raise ValueError(f"{where}: score {row[2]!r} is not a number") from err
            if not (math.isfinite(score) and 0.0 <= score <= 5.0):
                raise ValueError(f"{where}: score {score} outside [0, 5]")
            s1.append(row[0])
            s2.append(row[1])
            scores.append(score)
    if not scores:
        raise ValueError(f"{path}: no rows found")
    return STSTask(name=f"stsb-{lang}", sentences1=s1, sentences2=s2, scores=scores, source=str(path))


# --------------------------------------------------------------------------------------------------------
# spec strings


def _spec_error(spec: str, why: str = "unknown task spec") -> ValueError:
    return ValueError(
        f"{why}: {spec!r}; valid specs: {', '.join(TASK_SPECS)} "
        f"(lang in {', '.join(STSB_LANGS)}; split in {', '.join(STSB_SPLITS)}; N a positive int)"
    )


def _parse_count(spec: str, text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise _spec_error(spec, "bad item count")
    return int(text)


def _resolve_data_dir(data_dir: str | Path | None, spec: str) -> Path:
    if data_dir is not None:
        return Path(data_dir)
    found = default_data_dir()
    if found is None:
        raise FileNotFoundError(
            f"task {spec!r} needs the data directory, but none was found: set ${DATA_ENV_VAR}, pass "
            f"data_dir, or place it at ../shared/data (expected e.g. shared/data/{NQ_RELPATH.as_posix()} "
            f"or shared/data/stsb_multi_mt/data/stsb-en-test.csv)"
        )
    return found


def load_task(spec: str, data_dir: str | Path | None = None) -> RetrievalTask | STSTask:
    """Build a task from a short spec string, as used on command lines.

    ``"stdlib-code"`` / ``"stdlib-code:N"`` (N items, default 1000), ``"nq"`` / ``"nq:N"`` (first N
    questions), ``"stsb"`` / ``"stsb-de"`` / ``"stsb-en-dev"`` (language default en, split default test).
    ``data_dir`` defaults to :func:`default_data_dir`; unknown specs raise ``ValueError``.
    """
    spec = spec.strip()
    name, sep, count = spec.partition(":")
    if name == "stdlib-code":
        return stdlib_code_retrieval(max_items=_parse_count(spec, count) if sep else 1000)
    if name == "nq":
        n = _parse_count(spec, count) if sep else None
        return nq_retrieval(_resolve_data_dir(data_dir, spec), max_items=n)
    if name == "stsb" or name.startswith("stsb-"):
        if sep:
            raise _spec_error(spec, "stsb takes no item count")
        parts = name.split("-")[1:]
        lang = parts[0] if parts else "en"
        split = parts[1] if len(parts) > 1 else "test"
        if len(parts) > 2 or lang not in STSB_LANGS or split not in STSB_SPLITS:
            raise _spec_error(spec)
        return stsb(_resolve_data_dir(data_dir, spec), split=split, lang=lang)
    raise _spec_error(spec)
