"""Text-encoder embedding with best-practice batching, and the model loader for the main job.

The baseline is what a careful user runs: texts sorted by length so each batch pads only to its
own longest text (dynamic padding), SDPA attention, inference mode, mean pooling over the
attention mask. A reducer must not get credit for removing padding waste. The encoder and its
offline loader live in the library (:mod:`tokenreduce.prompt.text_encoder`, which the ``extractive``
prompt method uses too); the benchmark uses exactly that one.
"""

from __future__ import annotations

from ..prompt.text_encoder import DEFAULT_MODEL, TextEncoder, default_model_path, load_text_encoder

__all__ = ["DEFAULT_MODEL", "TextEncoder", "default_model_path", "load_text_encoder"]
