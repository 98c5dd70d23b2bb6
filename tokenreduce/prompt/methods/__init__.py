"""Prompt-compression methods, one file per method, registered by name (see :mod:`.base`)."""

from . import extractive, first, llmlingua2, longllmlingua, perplexity, random  # noqa: F401  (registers them)
from .base import (
    REGISTRY,
    ModelFreeMethod,
    Plan,
    PromptMethod,
    Scorer,
    check_method,
    make_prompt_method,
    prompt_methods,
    register,
)

__all__ = [
    "REGISTRY",
    "ModelFreeMethod",
    "Plan",
    "PromptMethod",
    "Scorer",
    "check_method",
    "make_prompt_method",
    "prompt_methods",
    "register",
]
