"""A RULER-style long-context suite, generated here: needles, variable tracking, common words, QA.

RULER (Hsieh et al., 2024, "RULER: What's the Real Context Size of Your Long-Context Language Models?")
builds synthetic samples at a chosen token length so that the answer sits somewhere in a long context;
KV-press papers and kvpress's leaderboard score presses on it. This module writes its own generators of
the same task kinds (no download): every sample is a pure function of ``(task, seed, length, tokenizer)``.

Tasks (RULER's names): ``niah_single``, ``niah_multikey``, ``niah_multivalue``, ``niah_multiquery`` (magic
numbers hidden in Paul Graham essays), ``vt`` (variable tracking through ``VAR X = VAR Y`` chains),
``cwe`` (most frequent words of a list), ``qa`` (NQ-open with its gold passage among other questions'
passages, from lost-in-the-middle's ``nq-open-oracle``). Scoring follows RULER: ``all`` = share of the
expected strings found in the answer, ``part`` = 1 if any expected string is found (case-insensitive).

Lengths count ``context + question`` (the question includes the answer prefix) with the given tokenizer;
each sample lands in ``[length - tolerance, length]`` where the filler's granularity allows it.
"""

from __future__ import annotations

import gzip
import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "niah_multiquery", "vt", "cwe", "qa")
ESSAYS_RELPATH = Path("needle_haystack_paul_graham", "PaulGrahamEssays")
NQ_RELPATH = Path("lost_in_the_middle", "qa_data", "nq-open-oracle.jsonl.gz")
NEEDLE = "The special magic number for {key} is: {value}."
# filler for variable tracking: plain sentences with no numbers (so no value is ambiguous)
NOISE = "The river runs past the old mill. A crow sits on the fence. Bread cools on the window sill. "


@dataclass(frozen=True)
class RulerSample:
    """One sample: the context (compressed), the question (fed after it), the expected strings."""

    task: str
    context: str
    question: str
    answers: tuple[str, ...]
    metric: str = "all"  # "all": share of answers found; "part": any answer found
    meta: dict = field(default_factory=dict)

    def score(self, prediction: str) -> float:
        """RULER's score of ``prediction`` for this sample, in [0, 1]."""
        return score(prediction, self.answers, self.metric)


def score(prediction: str, answers: Sequence[str], metric: str = "all") -> float:
    """``all``: fraction of ``answers`` that occur in ``prediction``; ``part``: 1.0 if any does (RULER's
    string_match_all / string_match_part; case-insensitive substring match)."""
    if metric not in ("all", "part"):
        raise ValueError(f"metric must be 'all' or 'part', got {metric!r}")
    if not answers:
        raise ValueError("answers is empty: a sample needs at least one expected string")
    pred = prediction.lower()
    hits = [a.lower() in pred for a in answers]
    return float(any(hits)) if metric == "part" else sum(hits) / len(hits)


def token_counter(tokenizer) -> Callable[[str], int]:
    """Token count of a text for an HF tokenizer, a ``tokenizers.Tokenizer`` or any object whose
    ``encode(text)`` returns ids (or an object with ``.ids``); no special tokens."""

    def count(text: str) -> int:
        try:
            enc = tokenizer.encode(text, add_special_tokens=False)
        except TypeError:
            enc = tokenizer.encode(text)
        return len(getattr(enc, "ids", enc))

    return count


# --------------------------------------------------------------------------------------------------------
# sources


def essay_sentences(data_dir: str | Path) -> list[str]:
    """The Paul Graham essays split into sentences, in file-name order (the needle haystack)."""
    root = Path(data_dir) / ESSAYS_RELPATH
    files = sorted(root.glob("*.txt"))
    if not files:
        raise FileNotFoundError(f"no essays under {root} (pass the shared data dir holding {ESSAYS_RELPATH})")
    text = " ".join(" ".join(f.read_text(encoding="utf-8", errors="replace").split()) for f in files)
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


def essay_words(sentences: Sequence[str], min_len: int = 5) -> list[str]:
    """Distinct lowercase alphabetic words of the essays, sorted (the common-words vocabulary)."""
    return sorted({w for s in sentences for w in re.findall(r"[a-z]+", s.lower()) if len(w) >= min_len})


def nq_records(data_dir: str | Path, limit: int = 2000) -> list[dict]:
    """The first ``limit`` NQ-open oracle records: question, answers, gold passage (title, text)."""
    path = Path(data_dir) / NQ_RELPATH
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found (pass the shared data dir holding {NQ_RELPATH})")
    out = []
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        for line in fh:
            if len(out) >= limit:
                break
            r = json.loads(line)
            gold = next(c for c in r["ctxs"] if c.get("isgold"))
            out.append({"question": r["question"], "answers": list(r["answers"]),
                        "title": gold["title"], "text": gold["text"]})
    return out


# --------------------------------------------------------------------------------------------------------
# length fitting


def _fit(build: Callable[[int], tuple[str, str]], count: Callable[[str], int], length: int, hi: int) -> int:
    """Largest filler size ``n`` in [0, hi] whose sample (context + question) fits in ``length`` tokens
    (binary search; sample length is monotone in ``n``)."""

    def size(n: int) -> int:
        ctx, q = build(n)
        return count(ctx + q)

    if size(0) > length:
        raise ValueError(f"length {length} is too short: the sample without filler already has {size(0)} tokens")
    lo, top = 0, hi
    while size(top) <= length and top < 1 << 22:
        lo, top = top, top * 2
    while top - lo > 1:
        mid = (lo + top) // 2
        lo, top = (mid, top) if size(mid) <= length else (lo, mid)
    return lo


def _haystack(sentences: Sequence[str], start: int, n: int) -> list[str]:
    return [sentences[(start + i) % len(sentences)] for i in range(n)]


def _insert(parts: list[str], items: Sequence[str], depths: Sequence[float]) -> list[str]:
    """``parts`` with each item inserted between sentences at its relative depth in [0, 1]."""
    out = list(parts)
    for item, d in sorted(zip(items, depths), key=lambda t: -t[1]):  # deepest first keeps indices valid
        out.insert(round(d * len(parts)), item)
    return out


def _number(rng: random.Random, used: set[str]) -> str:
    while True:
        v = str(rng.randint(1_000_000, 9_999_999))
        if v not in used:
            used.add(v)
            return v


def _key(rng: random.Random, words: Sequence[str], used: set[str]) -> str:
    while True:
        k = f"{rng.choice(words)}-{rng.choice(words)}"
        if k not in used:
            used.add(k)
            return k


# --------------------------------------------------------------------------------------------------------
# generators


def niah(task: str, count: Callable[[str], int], length: int, seed: int, sentences: Sequence[str],
         words: Sequence[str], n_needles: int = 4) -> RulerSample:
    """Needle-in-a-haystack: ``niah_single`` (1 needle), ``niah_multikey`` (n needles, one asked),
    ``niah_multivalue`` (n values for one key, all asked), ``niah_multiquery`` (n needles, 2 asked)."""
    rng = random.Random(f"{task}:{seed}")
    keys_used: set[str] = set()
    nums: set[str] = set()
    if task == "niah_multivalue":
        key = _key(rng, words, keys_used)
        needles = [(key, _number(rng, nums)) for _ in range(n_needles)]
        asked = [key]
    else:
        k = 1 if task == "niah_single" else n_needles
        needles = [(_key(rng, words, keys_used), _number(rng, nums)) for _ in range(k)]
        asked = [needles[0][0]] if task != "niah_multiquery" else [needles[0][0], needles[1][0]]
    rng.shuffle(needles)
    depths = [rng.random() for _ in needles]
    start = rng.randrange(len(sentences))
    texts = [NEEDLE.format(key=k, value=v) for k, v in needles]
    answers = tuple(v for k, v in needles if k in asked)
    if len(asked) == 1:
        what = "special magic numbers" if task == "niah_multivalue" else "special magic number"
        question = (f"\n\nQuestion: What {'are all the' if task == 'niah_multivalue' else 'is the'} {what} for "
                    f"{asked[0]} mentioned in the text above?\nAnswer: The {what} for {asked[0]} "
                    f"mentioned in the text above {'are' if task == 'niah_multivalue' else 'is'}:")
    else:
        keys = " and ".join(asked)
        question = (f"\n\nQuestion: What are the special magic numbers for {keys} mentioned in the text above?\n"
                    f"Answer: The special magic numbers for {keys} mentioned in the text above are:")
    head = "Some special magic numbers are hidden in the text below. Remember them.\n\n"

    def build(n: int) -> tuple[str, str]:
        return head + " ".join(_insert(_haystack(sentences, start, n), texts, depths)), question

    n = _fit(build, count, length, 64)
    ctx, q = build(n)
    return RulerSample(task, ctx, q, answers, "all", {"seed": seed, "depths": depths, "needles": needles})


def variable_tracking(count: Callable[[str], int], length: int, seed: int, hops: int = 4,
                      chains: int = 1) -> RulerSample:
    """``vt``: chains ``VAR A = 12345``, ``VAR B = VAR A``, ... spread through filler; the answer is every
    variable of the first chain (they all hold its value)."""
    rng = random.Random(f"vt:{seed}")
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    names: set[str] = set()
    while len(names) < chains * (hops + 1):
        names.add("".join(rng.choice(letters) for _ in range(5)))
    order = sorted(names)
    rng.shuffle(order)
    values: set[str] = set()
    statements, depth = [], []
    first_chain: list[str] = []
    for c in range(chains):
        vs = order[c * (hops + 1):(c + 1) * (hops + 1)]
        value = str(rng.randint(10_000, 99_999))
        while value in values:
            value = str(rng.randint(10_000, 99_999))
        values.add(value)
        ds = sorted(rng.random() for _ in vs)  # a chain is stated in order
        statements.append((f"VAR {vs[0]} = {value}.", ds[0]))
        statements += [(f"VAR {b} = VAR {a}.", d) for a, b, d in zip(vs, vs[1:], ds[1:])]
        if c == 0:
            first_chain, asked = vs, value
    noise = NOISE.strip().split(". ")
    noise = [s if s.endswith(".") else s + "." for s in noise]
    question = (f"\n\nQuestion: Find all variables that are assigned the value {asked} in the text above.\n"
                f"Answer: According to the chain(s) of variable assignment in the text above, "
                f"{len(first_chain)} variables are assigned the value {asked}, they are:")
    head = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
    texts = [s for s, _ in statements]
    depth = [d for _, d in statements]

    def build(n: int) -> tuple[str, str]:
        filler = [noise[i % len(noise)] for i in range(n)]
        return head + " ".join(_insert(filler, texts, depth)), question

    n = _fit(build, count, length, 64)
    ctx, q = build(n)
    return RulerSample("vt", ctx, q, tuple(first_chain), "all", {"seed": seed, "value": asked})


def common_words(count: Callable[[str], int], length: int, seed: int, words: Sequence[str],
                 n_common: int = 10, common_freq: int = 30, rare_freq: int = 3) -> RulerSample:
    """``cwe``: a numbered list where ``n_common`` words occur ``common_freq`` times and the rest
    ``rare_freq`` times; the answer is the ``n_common`` most frequent words. At short lengths the
    frequencies shrink (keeping common > rare) so that the common words alone fit."""
    rng = random.Random(f"cwe:{seed}")
    pool = list(words)
    rng.shuffle(pool)
    common = pool[:n_common]
    rare_pool = pool[n_common:]
    question = (f"\n\nQuestion: What are the {n_common} most common words in the list above?\n"
                f"Answer: The top {n_common} words that appear most often in the list are:")
    head = "Below is a numbered list of words. Memorize the ones that appear most often.\n"

    def listing(cf: int, rf: int, n_rare: int) -> list[str]:
        items = [w for w in common for _ in range(cf)] + [w for w in rare_pool[:n_rare] for _ in range(rf)]
        random.Random(f"cwe-order:{seed}:{cf}:{rf}:{n_rare}").shuffle(items)
        return items

    def build_with(cf: int, rf: int) -> Callable[[int], tuple[str, str]]:
        def build(n: int) -> tuple[str, str]:
            items = listing(cf, rf, min(n, len(rare_pool)))
            return head + "\n".join(f"{i + 1}. {w}" for i, w in enumerate(items)), question
        return build

    cf, rf = common_freq, rare_freq
    while count("".join(build_with(cf, rf)(0))) > length and cf > 2:
        cf, rf = max(2, cf // 2), max(1, min(rf, cf // 2 - 1))
    build = build_with(cf, rf)
    n = _fit(build, count, length, 16)
    ctx, q = build(min(n, len(rare_pool)))
    return RulerSample("cwe", ctx, q, tuple(common), "all", {"seed": seed, "common_freq": cf, "rare_freq": rf})


def nq_qa(count: Callable[[str], int], length: int, seed: int, records: Sequence[dict]) -> RulerSample:
    """``qa``: an NQ-open question with its gold passage placed at a random position among other
    questions' gold passages (distractors); any of the reference answers counts (RULER's qa metric)."""
    rng = random.Random(f"qa:{seed}")
    i = rng.randrange(len(records))
    rec = records[i]
    others = [r for j, r in enumerate(records) if j != i and r["text"] != rec["text"]]
    rng.shuffle(others)
    depth = rng.random()
    question = (f"\n\nAnswer the question based on the given documents. Only give me the answer.\n\n"
                f"Question: {rec['question']}\nAnswer:")
    head = "Answer the question based on the given documents.\n\nThe following are given documents.\n\n"

    def build(n: int) -> tuple[str, str]:
        docs = [others[k % len(others)] for k in range(n)]
        docs.insert(round(depth * n), rec)
        body = "\n\n".join(f"Document {k + 1}:\n{d['title']}\n{d['text']}" for k, d in enumerate(docs))
        return head + body, question

    n = _fit(build, count, length, 8)
    ctx, q = build(n)
    return RulerSample("qa", ctx, q, tuple(rec["answers"]), "part", {"seed": seed, "record": i, "depth": depth})


def make_sample(task: str, tokenizer, length: int, seed: int, data_dir: str | Path | None = None) -> RulerSample:
    """One ``task`` sample of about ``length`` tokens (context + question) for ``tokenizer``."""
    return make_suite(tokenizer, length, 1, [task], data_dir, seed=seed)[0]


def make_suite(tokenizer, length: int, samples: int, tasks: Sequence[str] = TASKS,
               data_dir: str | Path | None = None, seed: int = 0) -> list[RulerSample]:
    """``samples`` samples of each task in ``tasks`` at ``length`` tokens, task by task within each round;
    deterministic in ``seed``.
    ``data_dir`` holds the shared data (essays, NQ); it defaults to the auto-located ``shared/data``."""
    bad = [t for t in tasks if t not in TASKS]
    if bad:
        raise ValueError(f"unknown RULER task(s) {bad}; valid: {', '.join(TASKS)}")
    if length < 64:
        raise ValueError(f"length must be >= 64 tokens, got {length}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if data_dir is None:
        from .tasks import default_data_dir

        data_dir = default_data_dir()
        if data_dir is None:
            raise FileNotFoundError("shared data dir not found: pass data_dir (with needle_haystack_paul_graham/)")
    count = token_counter(tokenizer)
    sentences = words = records = None
    out = []
    for i in range(samples):  # round-robin over tasks: a run cut short still covers every task
        for task in tasks:
            s = seed + i
            if task.startswith("niah") or task == "cwe":
                if sentences is None:
                    sentences = essay_sentences(data_dir)
                    words = essay_words(sentences)
            if task.startswith("niah"):
                out.append(niah(task, count, length, s, sentences, words))
            elif task == "vt":
                out.append(variable_tracking(count, length, s))
            elif task == "cwe":
                out.append(common_words(count, length, s, words))
            else:
                if records is None:
                    records = nq_records(data_dir)
                out.append(nq_qa(count, length, s, records))
    return out
