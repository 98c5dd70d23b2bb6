"""Tokenizer efficiency metrics on parallel text.

* fertility: tokens per whitespace word (Rust et al., "How Good is Your Tokenizer?", ACL 2021); not
  meaningful for scripts written without spaces (zho, jpn, tha), where bytes/token and parity are used;
* bytes per token: UTF-8 bytes of the text / tokens (higher = more compression);
* unknown share: tokens that are the UNK id (text the tokenizer cannot represent: a low token count
  with a high UNK share is information loss, not efficiency);
* parity / token premium: tokens for a language / tokens for the same sentences in the reference
  language (Petrov et al., "Language Model Tokenizers Introduce Unfairness Between Languages",
  NeurIPS 2023);
* vocabulary audit: share of byte-fallback tokens, word-initial vs word-internal pieces, and how many
  vocabulary entries belong to each script;
* cost per request at user-given prices (USD per million tokens).
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from collections.abc import Sequence

from .load import Tok

SCRIPTS = (
    "LATIN", "CYRILLIC", "GREEK", "ARABIC", "HEBREW", "DEVANAGARI", "BENGALI", "TAMIL", "THAI", "CJK",
    "HIRAGANA", "KATAKANA", "HANGUL", "ETHIOPIC",
)  # fmt: skip


def text_stats(tok: Tok, lines: Sequence[str]) -> dict[str, float]:
    """Token, word, byte counts and fertility / bytes-per-token of ``lines`` (encoded one line at a time)."""
    ids = [tok.encode(line) for line in lines]
    tokens = sum(len(x) for x in ids)
    unk = tok.unk_id
    n_unk = sum(x.count(unk) for x in ids) if unk is not None else 0
    words = sum(len(line.split()) for line in lines)
    nbytes = sum(len(line.encode("utf-8")) for line in lines)
    return {
        "tokens": tokens,
        "words": words,
        "bytes": nbytes,
        "fertility": tokens / max(words, 1),
        "bytes_per_token": nbytes / max(tokens, 1),
        "unk_share": n_unk / max(tokens, 1),
    }


def parity(tokens: dict[str, int], reference: str) -> dict[str, float]:
    """Token premium of every language relative to ``reference`` (same parallel sentences)."""
    if reference not in tokens:
        raise ValueError(f"reference language {reference!r} not among {sorted(tokens)}")
    return {lang: n / tokens[reference] for lang, n in tokens.items()}


def script_of(s: str) -> str | None:
    """The script of the first letter in ``s`` (by Unicode character name), or None if it has no letter."""
    for ch in s:
        if ch.isalpha():
            name = unicodedata.name(ch, "")
            first = name.split(" ", 1)[0]
            if first in SCRIPTS:
                return first
            if first in ("HANGUL", "CJK") or "IDEOGRAPH" in name:
                return "CJK"
            return "OTHER"
    return None


def _is_word_initial(tok: Tok, raw: bytes | None, surface: str) -> bool:
    if tok.kind == "wordpiece":
        return not surface.startswith("##")
    if tok.kind == "spm" or surface.startswith("▁"):
        return surface.startswith("▁")
    return (raw or surface.encode()).startswith(b" ")


def vocab_audit(tok: Tok) -> dict[str, float]:
    """Shares of the vocabulary: byte-fallback tokens, word-initial / internal pieces, and per script."""
    pieces = tok.pieces()
    n = len(pieces)
    byte_tokens = sum(1 for _, _, is_byte in pieces if is_byte)
    initial = 0
    scripts: Counter[str] = Counter()
    for raw, surface, is_byte in pieces:
        if is_byte:
            continue
        initial += _is_word_initial(tok, raw, surface)
        scripts[script_of(surface.replace("▁", "").replace("##", "")) or "NONE"] += 1
    out = {
        "vocab": n,
        "byte_tokens": byte_tokens / n,
        "word_initial": initial / n,
        "word_internal": (n - byte_tokens - initial) / n,
    }
    out.update({f"script:{s}": scripts[s] / n for s in (*SCRIPTS, "OTHER", "NONE")})
    return out


def cost_per_request(tokens_per_request: float, usd_per_million: float) -> float:
    return tokens_per_request * usd_per_million / 1e6
