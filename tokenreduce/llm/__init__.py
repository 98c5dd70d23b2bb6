"""Causal language model loading (the embedded SmolLM2 default, local folders, GGUF files)."""

from .load import cache_dir, default_gguf_path, load_causal_lm

__all__ = ["cache_dir", "default_gguf_path", "load_causal_lm"]
