"""tokenreduce: training-free token reduction for transformer inference, measured honestly.

Public API::

    tokenreduce.patch(model, "tome", keep=0.5)   # or r=8, schedule="decreasing", ...
    tokenreduce.unpatch(model)
    with tokenreduce.patched(model, "evit", keep=0.7): ...
    tokenreduce.methods()                          # registered method names
"""

from .adapters import families, patch, patched, unpatch
from .adapters.patching import patch_info
from .methods import Method, make_method, methods, register

__version__ = "0.1.0"

__all__ = [
    "Method",
    "__version__",
    "families",
    "make_method",
    "methods",
    "patch",
    "patch_info",
    "patched",
    "register",
    "unpatch",
]
