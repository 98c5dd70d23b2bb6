"""Visual-token reduction methods for vision-language models, one per module, registered by name.

* before the LLM (``BeforeMethod``): :mod:`.fastervlm`, :mod:`.visionzip`, :mod:`.visual_tome`,
  :mod:`.visual_random`, :mod:`.visual_pool`;
* inside it (``InsideMethod``): :mod:`.fastv`, :mod:`.pyramiddrop`, :mod:`.text_guided`.

Every kept token keeps its original position (1-D or M-RoPE), so a later ``generate`` continues at the
position the unpruned model would use; a merged token takes the position of its target. A new method is
one module here with a ``@register``-ed frozen dataclass, imported below.
"""

from .base import (
    REGISTRY,
    BeforeMethod,
    InsideMethod,
    Stage,
    Unit,
    VisualMethod,
    cls_row_macs,
    make_vlm_method,
    register,
    vlm_methods,
)
from .fastervlm import FasterVLM
from .fastv import FastV
from .pyramiddrop import PyramidDrop
from .text_guided import TextGuided
from .visionzip import VisionZip
from .visual_pool import VisualPool
from .visual_random import VisualRandom
from .visual_tome import VisualToMe

__all__ = [
    "REGISTRY",
    "BeforeMethod",
    "FastV",
    "FasterVLM",
    "InsideMethod",
    "PyramidDrop",
    "Stage",
    "TextGuided",
    "Unit",
    "VisionZip",
    "VisualMethod",
    "VisualPool",
    "VisualRandom",
    "VisualToMe",
    "cls_row_macs",
    "make_vlm_method",
    "register",
    "vlm_methods",
]
