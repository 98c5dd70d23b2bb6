"""tokenreduce: training-free token reduction for transformer inference, measured honestly.

Public API::

    tokenreduce.patch(model, "tome", keep=0.5)   # or r=8, schedule="decreasing", ...
    tokenreduce.unpatch(model)
    with tokenreduce.patched(model, "evit", keep=0.7): ...
    tokenreduce.methods()                          # registered encoder method names
    tokenreduce.compress_prompt(context, question, rate=0.25)   # prompt / context compression
    tokenreduce.generate(model, tok, context, question, press="snapkv", keep=0.25)  # KV-cache presses
    tokenreduce.visualize(vit, "photo.jpg", "tome", r=8, out="tome.png")
    tokenreduce.export_onnx(patched_vit, pixel_values, "vit.onnx")  # returns max |ONNX - PyTorch|

Everything loads on first use, so ``import tokenreduce`` (and ``tokenreduce --help``) stays light.
"""

from importlib import import_module
from typing import Any

from ._version import __version__

_LAZY = {
    "families": "tokenreduce.encoder",
    "patch": "tokenreduce.api",
    "patched": "tokenreduce.api",
    "unpatch": "tokenreduce.api",
    "patch_info": "tokenreduce.api",
    "Method": "tokenreduce.encoder",
    "make_method": "tokenreduce.encoder",
    "methods": "tokenreduce.encoder.methods",
    "register": "tokenreduce.encoder",
    "compress_prompt": "tokenreduce.prompt",
    "PromptCompressor": "tokenreduce.prompt",
    "generate": "tokenreduce.kv",
    "visualize": "tokenreduce.viz",
    "export_onnx": "tokenreduce.deploy",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'tokenreduce' has no attribute {name!r}")


__all__ = [
    "Method",
    "PromptCompressor",
    "__version__",
    "compress_prompt",
    "export_onnx",
    "generate",
    "visualize",
    "families",
    "make_method",
    "methods",
    "patch",
    "patch_info",
    "patched",
    "register",
    "unpatch",
]
