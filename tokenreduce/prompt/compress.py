"""``compress_prompt``: one call from context (+ question) to a compressed, budget-exact context."""

from __future__ import annotations

import re
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .budget import Fit, fit_budget, fit_inside, fit_sentences
from .checks import (
    check_bind_protected,
    check_budget,
    check_context,
    check_documents,
    check_granularity,
    check_keep,
    check_kinds_arg,
    check_question,
    check_rate,
    check_target_tokens,
)
from .counting import TokenCounter, resolve_counter
from .methods import Plan, PromptMethod, Scorer, check_method, make_prompt_method
from .protect import find_protected, user_spans, validate_kinds
from .result import CompressionResult
from .segment import Segmentation, segment

DEFAULT_PROTECT = ("json", "code", "url", "number", "speaker")
DOC_SEPARATOR = "\n\n"


class SentenceCutWarning(UserWarning):
    """Whole sentences were asked for, but not one fits the budget: the best sentence was trimmed instead."""


def target_budget(original_tokens: int, rate: float | None, target_tokens: int | None) -> int:
    """Token budget from exactly one of ``rate`` (fraction kept, in (0, 1]) or ``target_tokens`` (>= 1)."""
    check_budget(rate, target_tokens)
    if rate is not None:
        return max(1, round(check_rate(rate) * original_tokens))
    return check_target_tokens(target_tokens)


def _check_inputs(context, question, protect, force, keep) -> str | list[str]:
    """Types and values of the per-call inputs (lone surrogates included), before any compute; returns the
    context with its documents in a list (an iterator is read once)."""
    check_context(context)
    if not isinstance(context, str):
        context = list(context)
        check_documents(context)
    check_question(question)
    check_kinds_arg(protect, "protect")
    check_kinds_arg(force, "force")
    validate_kinds(protect, "protect")
    validate_kinds(force, "force")
    check_keep(keep)
    return context


def _join_documents(context: str | Sequence[str]) -> tuple[str, list[int] | None]:
    if isinstance(context, str):
        return context, None
    docs = list(context)
    starts, pos = [], 0
    for d in docs:
        starts.append(pos)
        pos += len(d) + len(DOC_SEPARATOR)
    return DOC_SEPARATOR.join(docs), starts


def _speaker_requires(seg, speaker: list[tuple[int, int]]) -> np.ndarray | None:
    """requires[i] = index of the speaker-label piece that opens piece i's turn (or -1)."""
    if not speaker:
        return None
    label_pieces = np.unique(np.searchsorted(seg.starts, [s for s, _ in speaker], side="right") - 1)
    owner = np.full(len(seg), -1, dtype=np.int64)
    idx = np.searchsorted(label_pieces, np.arange(len(seg)), side="right") - 1
    ok = idx >= 0
    owner[ok] = label_pieces[idx[ok]]
    owner[label_pieces] = -1
    return owner


@dataclass(frozen=True)
class Prepared:
    """A segmented, scored context, ready for budgets."""

    seg: Segmentation
    forced: np.ndarray
    requires: np.ndarray | None
    plan: Plan | None
    original_tokens: int


class PromptCompressor:
    """A method with its models loaded and a target tokenizer; call it like :func:`compress_prompt`.

    ``tiktoken_dir``: a folder holding ``<name>.tiktoken`` rank files, searched first for a tiktoken
    budget tokenizer (the default one included). ``granularity``: ``"sentence"`` fills the budget with whole
    sentences (landing at most one sentence under it), ``"token"`` piece by piece (the last sentence reached may
    be cut at a word); None: the method's own (``sentence`` for the sentence rankers ``extractive``, ``first``,
    ``random``; ``token`` for the word droppers ``perplexity``, ``longllmlingua``, ``llmlingua2``).
    ``bind_protected`` (token granularity): a sentence with anything kept keeps all its protected spans (a
    number, ID or URL is never dropped from a kept sentence); False: the word-level fill of earlier versions,
    which may drop them but lands within a token or two of the target on number-dense text."""

    def __init__(
        self,
        method: str | PromptMethod | Scorer = "extractive",
        tokenizer: Any = None,
        *,
        tiktoken_dir: str | Path | None = None,
        granularity: str | None = None,
        bind_protected: bool = True,
        **params: Any,
    ) -> None:
        check_method(method)
        granularity = check_granularity(granularity)
        self.bind_protected = check_bind_protected(bind_protected)
        if params and not isinstance(method, str):
            raise ValueError("method parameters go with a method name, not with a method object")
        cfg = make_prompt_method(method, **params) if isinstance(method, str) else method
        # bad input fails before loading
        counter = resolve_counter(tokenizer, tiktoken_dir=tiktoken_dir) if tokenizer is not None else None
        self.scorer: Scorer = cfg.load() if isinstance(cfg, PromptMethod) else cfg
        self.counter: TokenCounter = counter or resolve_counter(None, self.scorer.own_tokenizer, tiktoken_dir)
        self.granularity: str = granularity or getattr(self.scorer, "granularity", "sentence")

    def __call__(
        self,
        context: str | Sequence[str],
        question: str | None = None,
        *,
        rate: float | None = None,
        target_tokens: int | None = None,
        protect: Sequence[str] = DEFAULT_PROTECT,
        force: Sequence[str] = (),
        keep: Iterable[str | re.Pattern | tuple[int, int]] | None = None,
        granularity: str | None = None,
    ) -> CompressionResult:
        check_granularity(granularity)
        prep = self.prepare(context, question, protect=protect, force=force, keep=keep)
        return self.fit(prep, rate=rate, target_tokens=target_tokens, granularity=granularity)

    def prepare(
        self,
        context: str | Sequence[str],
        question: str | None = None,
        *,
        protect: Sequence[str] = DEFAULT_PROTECT,
        force: Sequence[str] = (),
        keep: Iterable[str | re.Pattern | tuple[int, int]] | None = None,
    ) -> Prepared:
        """Segment, protect and score once; :meth:`fit` then applies any number of budgets."""
        context = _check_inputs(context, question, protect, force, keep)
        text, doc_starts = _join_documents(context)
        kinds = tuple(dict.fromkeys([*protect, *force]))
        found = find_protected(text, kinds)
        declared = user_spans(text, keep)
        spans = [s for v in found.values() for s in v] + declared
        seg = segment(text, spans, doc_starts)
        forced = np.zeros(len(seg), dtype=bool)
        for s, e in declared + [s for k in force for s in found[k]]:
            a = np.searchsorted(seg.ends, s, side="right")
            b = np.searchsorted(seg.starts, max(e, s + 1), side="left")
            forced[a:b] = True
        requires = _speaker_requires(seg, found.get("speaker", []) if "speaker" in protect else [])
        plan = self.scorer.plan(seg, question) if len(seg) else None
        return Prepared(seg, forced, requires, plan, self.counter.count(text))

    def fit(
        self,
        prep: Prepared,
        *,
        rate: float | None = None,
        target_tokens: int | None = None,
        granularity: str | None = None,
    ) -> CompressionResult:
        """Apply one budget to a prepared context (``granularity``: as in the constructor; None: the compressor's)."""
        gran = check_granularity(granularity) or self.granularity
        seg, text = prep.seg, prep.seg.text
        target = target_budget(prep.original_tokens, rate, target_tokens)
        if target >= prep.original_tokens or prep.plan is None:
            keep_all = np.ones(len(seg), dtype=bool)
            orig = prep.original_tokens
            return self._result(seg, keep_all, text, orig, orig, target, False, False, granularity=gran)
        plan = prep.plan
        priority = plan.priority
        if prep.requires is not None:  # speaker labels enter only with their turn, never alone
            labels = np.zeros(len(seg), dtype=bool)
            labels[prep.requires[prep.requires >= 0]] = True
            priority = priority[~labels[priority]]
        fit = self._fit(prep, priority, target, gran)
        order, cut, sentence_cut = plan.order, False, fit.sentence_cut
        if not fit.keep.any():  # no whole piece fits: cut the best one rather than return nothing
            seg, fit, cut = self._fit_inside(seg, priority if len(priority) else plan.priority, target)
            order, sentence_cut = None, True
        elif fit.over_budget:
            warnings.warn(
                f"forced/protected spans alone need {fit.tokens} tokens > target {target}; returning only them",
                stacklevel=3,
            )
        elif sentence_cut and gran == "sentence":
            warnings.warn(
                f"no whole sentence fits in {target} tokens; returning the best sentence trimmed at word level "
                "(result.sentence_cut)",
                SentenceCutWarning,
                stacklevel=3,
            )
        out = seg.join(fit.keep, order)
        reordered = order is not None
        return self._result(
            seg,
            fit.keep,
            out,
            prep.original_tokens,
            fit.tokens,
            target,
            fit.over_budget,
            reordered,
            cut,
            granularity=gran,
            sentence_cut=sentence_cut,
        )

    def _fit(self, prep: Prepared, priority: np.ndarray, target: int, granularity: str) -> Fit:
        """The budget controller of ``granularity``: whole sentences, or piece by piece."""
        seg, plan = prep.seg, prep.plan
        assert plan is not None
        if granularity == "sentence":
            return fit_sentences(
                seg, priority, target, self.counter.count, prep.forced, prep.requires, plan.order, plan.headings
            )
        bound = seg.atomic if self.bind_protected else None
        return fit_budget(
            seg, priority, target, self.counter.count, prep.forced, prep.requires, plan.order, bound=bound
        )

    def _fit_inside(self, seg: Segmentation, priority: np.ndarray, target: int) -> tuple[Segmentation, Fit, bool]:
        """The longest prefix of the best piece (:func:`.budget.fit_inside`), with a warning when that piece is
        a protected block (cut after all, since it alone exceeds the budget) or not one character fits; the
        flag says whether a protected block was cut."""
        piece = int(priority[0]) if len(priority) else 0
        cut_seg, fit = fit_inside(seg, piece, target, self.counter.count)
        s, e = int(seg.starts[piece]), int(seg.ends[piece])
        if fit.over_budget:
            warnings.warn(
                f"not even one character fits in {target} tokens; returning the first ({fit.tokens} tokens)",
                stacklevel=4,
            )
        cut = bool(seg.atomic[piece] and cut_seg.ends[piece] < e)
        if cut and not fit.over_budget:
            warnings.warn(
                f"the protected block at characters {s}:{e} alone exceeds the budget of {target} tokens and "
                "nothing else fits; returning its beginning, cut to fit",
                stacklevel=4,
            )
        return cut_seg, fit, cut

    def _result(
        self, seg, keep, out, orig, comp, target, over, reordered, cut=False, *, granularity, sentence_cut=False
    ) -> CompressionResult:
        return CompressionResult(
            text=out,
            original=seg.text,
            keep=keep,
            offsets=np.stack([seg.starts, seg.ends], axis=1),
            original_tokens=orig,
            compressed_tokens=comp,
            target_tokens=target,
            tokenizer=self.counter.name,
            method=self.scorer.name,
            over_budget=over,
            reordered=reordered,
            protected_cut=cut,
            granularity=granularity,
            sentence_cut=sentence_cut,
            sentences=seg.sent,
        )


def compress_prompt(
    context: str | Sequence[str],
    question: str | None = None,
    *,
    rate: float | None = None,
    target_tokens: int | None = None,
    method: str | PromptMethod | Scorer = "extractive",
    tokenizer: Any = None,
    protect: Sequence[str] = DEFAULT_PROTECT,
    force: Sequence[str] = (),
    keep: Iterable[str | re.Pattern | tuple[int, int]] | None = None,
    tiktoken_dir: str | Path | None = None,
    granularity: str | None = None,
    bind_protected: bool = True,
    **params: Any,
) -> CompressionResult:
    """Compress ``context`` (a string, or a list of documents joined by blank lines) to ``rate`` of its
    tokens or to ``target_tokens``, counted in ``tokenizer`` (default cl100k_base when its file is available
    locally, in ``tiktoken_dir`` or the places :mod:`.tiktoken_local` names, else the method's own tokenizer;
    ``result.tokenizer`` names the one used).

    The output is an order-preserving subsequence of the input (unless a method reorders); ``protect``
    kinds are never cut (kept whole or dropped whole), ``force`` kinds and ``keep`` spans are always kept.
    ``granularity="sentence"`` (the default of the sentence-ranking methods) keeps whole sentences only, at
    most one sentence under the budget; when not one sentence fits, the best one is trimmed at word level
    (:class:`SentenceCutWarning`, ``result.sentence_cut``). ``granularity="token"`` trims at word level (the
    default of the word-dropping LM methods); it never drops a protected span from a sentence with anything
    kept (``bind_protected=False``: the word-level fill of earlier versions).
    Loads the method's models on each call; use :class:`PromptCompressor` to reuse them.

    The output is never empty for a non-empty input: when no whole piece fits the budget (a text that is one
    long protected block, say), the best piece is cut to its longest prefix that fits, with a warning when it
    was a protected block. Long words (over 64 characters: CJK runs without spaces, minified blobs) are cut
    into pieces of about 16 characters. All arguments are checked before any model loads: wrong types
    raise :class:`.checks.ArgTypeError` (a TypeError and a ValueError), bad values ``ValueError``; text with
    a lone surrogate (not valid Unicode) is refused with its index.
    """
    check_budget(rate, target_tokens)
    check_method(method)
    check_granularity(granularity)
    check_bind_protected(bind_protected)
    context = _check_inputs(context, question, protect, force, keep)
    comp = PromptCompressor(
        method, tokenizer, tiktoken_dir=tiktoken_dir, granularity=granularity, bind_protected=bind_protected, **params
    )
    return comp(context, question, rate=rate, target_tokens=target_tokens, protect=protect, force=force, keep=keep)
