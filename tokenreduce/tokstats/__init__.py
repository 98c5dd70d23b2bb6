"""Tokenizer efficiency analysis: fertility, bytes per token, parity across languages, vocabulary audit."""

from .load import KNOWN, Tok, load_tok
from .stats import cost_per_request, parity, script_of, text_stats, vocab_audit

__all__ = ["KNOWN", "Tok", "cost_per_request", "load_tok", "parity", "script_of", "text_stats", "vocab_audit"]
