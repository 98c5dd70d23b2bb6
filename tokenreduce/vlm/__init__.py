"""Visual-token reduction for vision-language models (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL / Qwen2.5-VL).

``tokenreduce.patch(vlm, "fastv", keep=0.25)`` routes here. :mod:`.methods` has one module per method,
:mod:`.families` one adapter per model family; ``runner.py`` holds the hooks between them.
"""

from .families import find_vlm
from .methods import VisualMethod, make_vlm_method, register, vlm_methods
from .patch import VLMHandle, patch_vlm

__all__ = ["VLMHandle", "VisualMethod", "find_vlm", "make_vlm_method", "patch_vlm", "register", "vlm_methods"]
