"""Expected answer type from the question's wh-phrase: sentences that can hold such an answer score higher.

"When ..." / "what year ..." asks for a date, "how many ..." for a number; a sentence with a year or a
month name (or a number) the question does not already contain is a candidate answer sentence. This is
the answer-type matching of classic QA systems (Li & Roth, "Learning Question Classifiers", COLING 2002;
Moldovan et al., "The Structure and Performance of an Open-Domain Question Answering System", ACL 2000),
reduced to two coarse, rule-based types; other questions get no cue. English only.
"""

from __future__ import annotations

import re

import numpy as np

_DATE_Q = re.compile(r"\b(?:when|what (?:year|date|decade|century|month)|which (?:year|date|decade|century|month))\b")
_NUMBER_Q = re.compile(
    r"\bhow (?:many|much|old|long|far|tall|big|large|high|deep|wide|heavy)\b|\bwhat (?:percentage|number)\b"
)
_YEAR = re.compile(r"\b(?:1[0-9]{3}|20[0-9]{2})\b")
_MONTH = re.compile(r"\b(?:January|February|March|April|May|June|July|August|September|October|November|December)\b")
_NUMBER = re.compile(r"\d+(?:[.,]\d+)*")


def answer_type(question: str | None) -> str | None:
    """``"date"``, ``"number"`` or None (no cue) from the question's wh-phrase."""
    q = (question or "").lower()
    if _DATE_Q.search(q):
        return "date"
    if _NUMBER_Q.search(q):
        return "number"
    return None


def answer_type_scores(question: str | None, sents: list[str]) -> np.ndarray:
    """1.0 for sentences holding a new value of the question's expected answer type, else 0.0."""
    kind = answer_type(question)
    out = np.zeros(len(sents))
    if kind == "date":
        seen = set(_YEAR.findall(question or ""))
        for i, s in enumerate(sents):
            out[i] = float(bool(set(_YEAR.findall(s)) - seen) or bool(_MONTH.search(s)))
    elif kind == "number":
        seen = set(_NUMBER.findall(question or ""))
        for i, s in enumerate(sents):
            out[i] = float(bool(set(_NUMBER.findall(s)) - seen))
    return out
