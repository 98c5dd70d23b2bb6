"""What every prompt benchmark command shares: the method variants by command-line name, the data
folder, and the budget tokenizer's tiktoken files inside it.

Both :mod:`.bench_cli` (retention) and :mod:`.bench_inputs` (adherence, speed) read these, so neither
imports the other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..bench.tasks import default_data_dir
from .compress import PromptCompressor
from .methods import Scorer

TIKTOKEN_RELPATH = Path("tokenizers", "tiktoken")

# name on the command line -> (registered method, parameters)
VARIANTS: dict[str, tuple[str, dict[str, Any]]] = {
    "first": ("first", {}),
    "random": ("random", {}),
    "extractive": ("extractive", {}),
    "extractive-token": ("extractive", {}),
    "extractive-emb": ("extractive", {"w_bm25": 0.0}),
    # ablations: each drops one part of the default; "-links" is the previous default (links, no chains)
    "extractive-nolink": ("extractive", {"w_link": 0.0, "chain_link": 0.0, "chain_named": 0.0, "w_bridge": 0.0}),
    "extractive-nochain": ("extractive", {"w_chain": 0.0}),
    "extractive-notype": ("extractive", {"w_type": 0.0}),
    "extractive-nodecay": ("extractive", {"doc_decay": 0.0}),
    "extractive-notitles": ("extractive", {"keep_titles": False}),
    # the default of stop 24 (bridge by position at 1.5, no coverage pass), and this round's two parts alone
    "extractive-stop24": ("extractive", {"w_coverage": 0.0, "w_bridge": 1.5, "bridge_by_score": False}),
    "extractive-nocover": ("extractive", {"w_coverage": 0.0}),
    "extractive-leadbridge": ("extractive", {"bridge_by_score": False}),
    "extractive-nobridge": ("extractive", {"w_bridge": 0.0, "dedup": False, "w_coverage": 0.0}),  # stop 23's
    "extractive-links": (
        "extractive",
        {"w_chain": 0.0, "w_type": 0.0, "doc_decay": 0.0, "keep_titles": False, "w_bridge": 0.0, "w_coverage": 0.0},
    ),
    "extractive-plain": (
        "extractive",
        {"w_link": 0.0, "w_chain": 0.0, "w_type": 0.0, "doc_decay": 0.0, "keep_titles": False, "w_bridge": 0.0},
    ),
    "perplexity": ("perplexity", {}),
    "longllmlingua": ("longllmlingua", {}),
}


# compressor options of a variant (not method parameters); default: the compressor's defaults
VARIANT_OPTIONS: dict[str, dict[str, Any]] = {
    # the previous default: word-level fill (the last sentence reached cut at a word), protected spans not bound
    "extractive-token": {"granularity": "token", "bind_protected": False},
}


def check_variants(names: list[str]) -> None:
    """``ValueError`` naming the unknown variants and the known ones."""
    bad = [n for n in names if n not in VARIANTS]
    if bad:
        raise ValueError(f"unknown method variant(s) {bad}; available: {', '.join(VARIANTS)}")


def find_data(data_dir: str | Path | None) -> Path | None:
    """``data_dir`` if given, else the shared data folder found automatically (None if there is none)."""
    return Path(data_dir) if data_dir else default_data_dir()


def require_data(data_dir: str | Path | None) -> Path:
    """The data folder, or ``FileNotFoundError`` asking for ``--data-dir``."""
    data = find_data(data_dir)
    if data is None:
        raise FileNotFoundError("needs the shared data folder: pass --data-dir")
    return data


def tiktoken_dir(data_dir: str | Path | None) -> Path | None:
    """The folder of tiktoken rank files inside the data folder (None without a data folder)."""
    data = find_data(data_dir)
    return data / TIKTOKEN_RELPATH if data is not None else None


def split_variant(variant: str) -> tuple[str, dict[str, Any], dict[str, Any]]:
    """A variant's method name, its method parameters and its compressor options (:data:`VARIANT_OPTIONS`)."""
    method, params = VARIANTS[variant]
    return method, params, VARIANT_OPTIONS.get(variant, {})


def make_compressor(
    variant: str | Scorer, tokenizer: Any, data_dir: str | Path | None, **options: Any
) -> PromptCompressor:
    """The compressor of a command-line variant (or of an already loaded scorer), its tiktoken files taken
    from the data folder; ``options`` (``granularity``, ``bind_protected``) override the variant's own."""
    if isinstance(variant, Scorer):
        return PromptCompressor(variant, tokenizer=tokenizer, tiktoken_dir=tiktoken_dir(data_dir), **options)
    method, params, own = split_variant(variant)
    options = {**own, **options}
    return PromptCompressor(method, tokenizer=tokenizer, tiktoken_dir=tiktoken_dir(data_dir), **options, **params)
