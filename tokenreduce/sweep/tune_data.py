"""The user's side of ``tokenreduce tune``: their data file, its tuning / held-out split, the tolerance.

Everything here is checked before any model loads (no torch import), so bad input is one clear
line. Data is a text file (one passage per line) or JSONL with a ``text`` field and optional
labels: ``query`` (a string) or ``queries`` (a list) naming questions whose answer is that passage.
With labels, quality is retrieval of the passage for each query (MRR, recall@k); without, it is
fidelity to the unreduced model: mean cosine between reduced and unreduced embeddings
(``fidelity``), or whether each passage's unreduced embedding still retrieves its reduced one
(``agreement``: MRR of that self-retrieval).
"""

from __future__ import annotations

import hashlib
import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ..bench.tasks import RetrievalTask

LABELED_METRICS = ("mrr", "recall@1", "recall@10", "fidelity")
UNLABELED_METRICS = ("fidelity", "agreement")
MIN_PASSAGES = 2  # per split: retrieval needs a pool to rank in


@dataclass(frozen=True)
class Record:
    """One unique passage and the queries (labels) that should retrieve it."""

    text: str
    queries: tuple[str, ...] = ()


@dataclass(frozen=True)
class Tolerance:
    """How much quality may be lost: ``max_loss`` relative on ``metric``, or an absolute ``min_value``."""

    metric: str
    max_loss: float | None = None
    min_value: float | None = None

    def loss(self, value: float, base: float) -> float:
        """Relative loss against the unreduced model (positive = worse)."""
        return (base - value) / max(abs(base), 1e-12)

    def meets(self, value: float, base: float) -> bool:
        if self.min_value is not None:
            return value >= self.min_value
        assert self.max_loss is not None
        return self.loss(value, base) <= self.max_loss + 1e-12

    def describe(self) -> str:
        if self.min_value is not None:
            return f"{self.metric} >= {self.min_value:g}"
        return f"{self.metric} loss <= {100 * (self.max_loss or 0):g}% (relative to the unreduced model)"


def parse_fraction(text: str, what: str) -> float:
    """``"1%"`` -> 0.01, ``"0.01"`` -> 0.01; a ``ValueError`` naming ``what`` otherwise."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"{what} must be a number or a percentage such as 1%, got {text!r}") from None
    if value != value:  # NaN
        raise ValueError(f"{what} must be a number, got {text!r}")
    return value


def make_tolerance(max_loss: str | None, min_fidelity: str | None, metric: str | None, labeled: bool) -> Tolerance:
    """The tolerance from the command-line strings (default: at most 1% relative loss)."""
    valid = LABELED_METRICS if labeled else UNLABELED_METRICS
    kind = "labeled" if labeled else "unlabeled (no query field)"
    return tolerance_from(max_loss, min_fidelity, metric, valid=valid, data=f"{kind} data", floor_metric="fidelity",
                          bounds="the fidelity metric", floor_unit="a mean cosine")


def tolerance_from(
    max_loss: str | None, min_fidelity: str | None, metric: str | None, *, valid: Sequence[str], data: str,
    floor_metric: str, bounds: str, floor_unit: str,
) -> Tolerance:
    """``--max-loss`` relative on ``metric`` (the first of ``valid`` by default; 1% when neither is given) or
    ``--min-fidelity``, a floor on ``floor_metric``; every bad combination refused with its reason. ``data``,
    ``bounds`` and ``floor_unit`` name, in the messages, what is tuned, what the floor bounds, and its unit."""
    if metric is not None and metric not in valid:
        raise ValueError(f"metric {metric!r} is not available for {data}; choose from {', '.join(valid)}")
    if max_loss is not None and min_fidelity is not None:
        raise ValueError("give either --max-loss or --min-fidelity, not both")
    if min_fidelity is not None:
        if metric not in (None, floor_metric):
            raise ValueError(f"--min-fidelity bounds {bounds}; drop --metric {metric}")
        floor = parse_fraction(min_fidelity, "--min-fidelity")
        if not 0 < floor <= 1:
            raise ValueError(f"--min-fidelity must be in (0, 1] ({floor_unit}), got {min_fidelity}")
        return Tolerance(floor_metric, min_value=floor)
    loss = parse_fraction(max_loss if max_loss is not None else "1%", "--max-loss")
    if not 0 <= loss < 1:
        raise ValueError(f"--max-loss must be in [0, 100%), got {max_loss}")
    return Tolerance(metric or valid[0], max_loss=loss)


def _jsonl_record(line: str, where: str) -> Record:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg})") from None
    if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
        raise ValueError(f"{where}: expected an object with a string field 'text'")
    queries = obj.get("queries", [obj["query"]] if "query" in obj else [])
    if not isinstance(queries, list) or not all(isinstance(q, str) and q.strip() for q in queries):
        raise ValueError(f"{where}: 'query' must be a non-empty string ('queries' a list of them)")
    return Record(obj["text"], tuple(q.strip() for q in queries))


def read_data(path: str | Path) -> list[Record]:
    """Unique passages of a text or JSONL file, in file order (a repeated passage merges its queries)."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"data file {p} not found (give a text file, one passage per line, or JSONL)")
    try:
        lines = p.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise ValueError(f"data file {p} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    first = next((ln.strip() for ln in lines if ln.strip()), "")
    jsonl = p.suffix in (".jsonl", ".json") or first.startswith("{")
    merged: dict[str, list[str]] = {}
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        rec = _jsonl_record(line, f"{p}:{n}") if jsonl else Record(line.strip())
        if rec.text.strip():
            merged.setdefault(rec.text.strip(), []).extend(rec.queries)
    if not merged:
        raise ValueError(f"data file {p} holds no passages (empty lines and empty 'text' fields are skipped)")
    return [Record(t, tuple(qs)) for t, qs in merged.items()]


def split(records: list[Record], holdout: float, seed: int = 0) -> tuple[list[Record], list[Record]]:
    """(tuning, held-out): a seeded shuffle of whole passages, ``holdout`` of them held out."""
    if not 0 < holdout < 1:
        raise ValueError(f"--holdout must be in (0, 1), got {holdout}")
    order = list(range(len(records)))
    random.Random(seed).shuffle(order)
    n_held = round(len(records) * holdout)
    held = [records[i] for i in sorted(order[:n_held])]
    tune = [records[i] for i in sorted(order[n_held:])]
    labeled = any(r.queries for r in records)
    for name, part in (("tuning", tune), ("held-out", held)):
        if len(part) < MIN_PASSAGES or (labeled and not any(r.queries for r in part)):
            need = f"{MIN_PASSAGES} passages" + (" and a query" if labeled else "")
            raise ValueError(
                f"the {name} split has {len(part)} passage(s) of {len(records)}; each split needs at least {need} "
                "(give more data or change --holdout)"
            )
    return tune, held


def task_spec(name: str, records: list[Record]) -> str:
    """A task id for the store: the split's name and a hash of its content (new data, new points)."""
    blob = json.dumps([[r.text, list(r.queries)] for r in records], ensure_ascii=False).encode()
    return f"{name}@{hashlib.sha256(blob).hexdigest()[:16]}"


def to_task(name: str, records: list[Record], source: str) -> RetrievalTask:
    """A retrieval task: labeled, each query against the split's passages; unlabeled, each passage's
    unreduced embedding against the reduced passages (queries are never reduced by the benchmark)."""
    passages = [r.text for r in records]
    if any(r.queries for r in records):
        pairs = [(q, i) for i, r in enumerate(records) for q in r.queries]
        return RetrievalTask(name, [q for q, _ in pairs], passages, [i for _, i in pairs], source)
    return RetrievalTask(name, passages, passages, list(range(len(passages))), source)


def metric_key(task: str, metric: str) -> str:
    """The benchmark row key holding ``metric`` for ``task`` (``agreement`` is the self-retrieval MRR)."""
    if metric == "fidelity":
        return f"{task}:fidelity_cos"
    return f"{task}:{'mrr' if metric == 'agreement' else metric}"
