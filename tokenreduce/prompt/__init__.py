"""Prompt compression for LLM applications: budget-exact, structure-preserving, question-aware."""

from . import baselines as _baselines  # noqa: F401  (registers the methods)
from . import extractive as _extractive  # noqa: F401
from . import lingua2 as _lingua2  # noqa: F401
from . import perplexity as _perplexity  # noqa: F401
from .compress import DEFAULT_PROTECT, PromptCompressor, compress_prompt, target_budget
from .counting import DEFAULT_TOKENIZER, TokenCounter, resolve_counter
from .methods import Plan, make_prompt_method, prompt_methods
from .result import CompressionResult
from .tiktoken_local import TiktokenUnavailable

__all__ = [
    "DEFAULT_PROTECT",
    "DEFAULT_TOKENIZER",
    "CompressionResult",
    "Plan",
    "PromptCompressor",
    "TiktokenUnavailable",
    "TokenCounter",
    "compress_prompt",
    "make_prompt_method",
    "prompt_methods",
    "resolve_counter",
    "target_budget",
]
