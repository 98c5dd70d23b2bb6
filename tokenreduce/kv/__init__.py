"""KV-cache compression ("presses") for Hugging Face decoder LLMs.

    from tokenreduce.kv import generate, make_press, apply_press
    generate(model, tok, context, question, press="snapkv", keep=0.25)
    with apply_press(model, make_press("streaming_llm", keep=0.25)):
        model.generate(**inputs)
"""

from .cache import kv_bytes
from .gemfilter import gemfilter_ids, gemfilter_select
from .generate import generate, generate_ids
from .hooks import apply_press
from .presses import LayerView, Press, make_press, presses, register

__all__ = ["LayerView", "Press", "apply_press", "gemfilter_ids", "gemfilter_select", "generate", "generate_ids",
           "kv_bytes", "make_press", "presses", "register"]
