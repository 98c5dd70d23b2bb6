"""Diffusion methods, one per module, registered by name: :mod:`.tomesd`, :mod:`.tomesd_threshold`,
:mod:`.todo` (inside each block), :mod:`.dit_merge` (across a transformer's blocks). A new method is one
module here with a ``@register``-ed frozen dataclass, imported below."""

from .base import (
    REGISTRY,
    BlockTokens,
    DiffusionMethod,
    MergePlan,
    Plan,
    PoolPlan,
    StrideMethod,
    diffusion_methods,
    make_diffusion_method,
    register,
)
from .dit_merge import DiTMerge
from .todo import ToDo
from .tomesd import ToMeSD
from .tomesd_threshold import ToMeSDThreshold

__all__ = [
    "REGISTRY",
    "BlockTokens",
    "DiTMerge",
    "DiffusionMethod",
    "MergePlan",
    "Plan",
    "PoolPlan",
    "StrideMethod",
    "ToDo",
    "ToMeSD",
    "ToMeSDThreshold",
    "diffusion_methods",
    "make_diffusion_method",
    "register",
]
