"""Multi-document QA contexts for measuring answer retention, built from ``../shared/data``.

* NQ-20: for each NaturalQuestions-open question (lost-in-the-middle oracle file; Liu et al., "Lost
  in the Middle", TACL 2024), its gold passage plus the 19 gold passages of *other* questions that
  BM25 ranks highest for this question (hard negatives; passages containing an answer string are
  skipped), with the gold position cycling over 0, 4, 9, 14, 19. This BM25 (IDF over the whole pool
  of gold passages) is only used to build contexts; it is separate from the extractive scorer's.
* HotpotQA distractor: 10 paragraphs, 2 of them gold (Yang et al., EMNLP 2018).
"""

from __future__ import annotations

import gzip
import json
import math
import re
import string
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..bench.tasks import NQ_RELPATH, _require_file
from .lexical import terms

HOTPOT_RELPATH = Path("hotpotqa_distractor_dev_sample100", "hotpotqa_distractor_dev_sample100.jsonl")
GOLD_POSITIONS = (0, 4, 9, 14, 19)


@dataclass(frozen=True)
class QAExample:
    question: str
    answers: list[str]
    documents: list[str]
    gold_docs: list[int]
    support: list[str]  # sentences that must survive (HotpotQA supporting facts); empty for NQ


def normalize(s: str) -> str:
    """SQuAD-style answer normalization (lowercase, no punctuation/articles, single spaces)."""
    s = s.lower()
    s = "".join(ch for ch in s if ch not in set(string.punctuation))
    s = re.sub(r"\b(a|an|the)\b", " ", s)
    return " ".join(s.split())


def contains(text: str, needle: str) -> bool:
    n = normalize(needle)
    return bool(n) and f" {n} " in f" {normalize(text)} "


class BM25Index:
    """Okapi BM25 over a fixed passage pool (k1=0.9, b=0.4, Lucene-style IDF), inverted index."""

    def __init__(self, passages: list[str], k1: float = 0.9, b: float = 0.4) -> None:
        self.n = len(passages)
        toks = [terms(p) for p in passages]
        self.len = np.array([len(t) for t in toks], dtype=float)
        avg = self.len.mean() if self.n else 1.0
        self.norm = k1 * (1 - b + b * self.len / avg)
        self.k1 = k1
        self.post: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for i, t in enumerate(toks):
            for term, f in Counter(t).items():
                self.post[term].append((i, f))

    def scores(self, query: str) -> np.ndarray:
        out = np.zeros(self.n)
        for term in set(terms(query)):
            post = self.post.get(term)
            if not post:
                continue
            idf = math.log(1 + (self.n - len(post) + 0.5) / (len(post) + 0.5))
            idx = np.fromiter((p[0] for p in post), dtype=np.int64, count=len(post))
            tf = np.fromiter((p[1] for p in post), dtype=float, count=len(post))
            out[idx] += idf * tf * (self.k1 + 1) / (tf + self.norm[idx])
        return out


def _doc(title: str, text: str) -> str:
    return f"Title: {title}\n{text}"


def nq20(data_dir: str | Path, n: int = 150, offset: int = 0, n_docs: int = 20) -> list[QAExample]:
    """NQ-20 hard-negative contexts for questions ``offset .. offset + n - 1`` of the oracle file."""
    path = _require_file(Path(data_dir) / NQ_RELPATH, "nq")
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        rows = [json.loads(line) for line in fh if line.strip()]
    pool: list[str] = []
    index: dict[str, int] = {}
    gold_of: list[int] = []
    for r in rows:
        g = next(c for c in r["ctxs"] if c.get("isgold"))
        d = _doc(g["title"], g["text"])
        if d not in index:
            index[d] = len(pool)
            pool.append(d)
        gold_of.append(index[d])
    bm25 = BM25Index(pool)
    out = []
    for qi in range(offset, min(offset + n, len(rows))):
        r = rows[qi]
        gold = pool[gold_of[qi]]
        order = np.argsort(-bm25.scores(r["question"]), kind="stable")
        negs = []
        for j in order:
            if j == gold_of[qi] or any(contains(pool[j], a) for a in r["answers"]):
                continue
            negs.append(pool[j])
            if len(negs) == n_docs - 1:
                break
        pos = GOLD_POSITIONS[(qi - offset) % len(GOLD_POSITIONS)] % n_docs
        docs = negs[:pos] + [gold] + negs[pos:]
        out.append(QAExample(r["question"], list(r["answers"]), docs, [pos], []))
    return out


def hotpotqa(data_dir: str | Path, n: int | None = None, offset: int = 0) -> list[QAExample]:
    """HotpotQA distractor sample, questions ``offset .. offset + n - 1`` (all from ``offset`` when ``n`` is
    None): 10 paragraphs ("Title: t" line + sentences), 2 gold."""
    path = _require_file(Path(data_dir) / HOTPOT_RELPATH, "hotpotqa")
    out = []
    with open(path, encoding="utf-8") as fh:
        rows = [line for line in fh if line.strip()]
    for line in rows[offset:]:
        r = json.loads(line)
        titles, sents = r["context"]["title"], r["context"]["sentences"]
        docs = [_doc(t, "".join(s).strip()) for t, s in zip(titles, sents)]
        sf = r["supporting_facts"]
        gold = sorted({titles.index(t) for t in sf["title"] if t in titles})
        support = [
            sents[titles.index(t)][k].strip()
            for t, k in zip(sf["title"], sf["sent_id"])
            if t in titles and k < len(sents[titles.index(t)])
        ]
        out.append(QAExample(r["question"], [r["answer"]], docs, gold, support))
        if n is not None and len(out) >= n:
            break
    return out
