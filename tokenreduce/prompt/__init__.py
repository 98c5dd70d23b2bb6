"""Prompt compression for LLM applications: budget-exact, structure-preserving, question-aware."""

from .compress import DEFAULT_PROTECT, PromptCompressor, SentenceCutWarning, compress_prompt, target_budget
from .counting import DEFAULT_TOKENIZER, TokenCounter, resolve_counter
from .methods import ModelFreeMethod, Plan, PromptMethod, Scorer, make_prompt_method, prompt_methods, register
from .result import CompressionResult
from .tiktoken_local import TiktokenUnavailable

__all__ = [
    "DEFAULT_PROTECT",
    "DEFAULT_TOKENIZER",
    "CompressionResult",
    "ModelFreeMethod",
    "Plan",
    "PromptCompressor",
    "PromptMethod",
    "Scorer",
    "SentenceCutWarning",
    "TiktokenUnavailable",
    "TokenCounter",
    "compress_prompt",
    "make_prompt_method",
    "prompt_methods",
    "register",
    "resolve_counter",
    "target_budget",
]
