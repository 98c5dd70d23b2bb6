"""Visual-token reduction methods for vision-language models, one per module, registered by name.

* before the LLM (``BeforeMethod``): :mod:`.fastervlm`, :mod:`.visionzip`, :mod:`.visual_tome`,
  :mod:`.visual_random`, :mod:`.visual_pool`, :mod:`.divprune`, :mod:`.vispruner`, :mod:`.cdpruner`,
  :mod:`.vtc_cls`, :mod:`.fopru`, :mod:`.downsample`;
* inside it (``InsideMethod``): :mod:`.fastv`, :mod:`.pyramiddrop`, :mod:`.text_guided`, :mod:`.dart`,
  :mod:`.dyvte`, :mod:`.mustdrop` (which also merges before the LLM).

Every kept token keeps its original position (1-D or M-RoPE), so a later ``generate`` continues at the
position the unpruned model would use; a merged token takes the position of its target. A new method is
one module here with a ``@register``-ed frozen dataclass, imported below.
"""

from .base import (
    REGISTRY,
    BeforeMethod,
    InsideMethod,
    Mask,
    Stage,
    Unit,
    VisualMethod,
    cls_row_macs,
    make_vlm_method,
    register,
    vlm_methods,
)
from .cdpruner import CDPruner
from .dart import DART
from .divprune import DivPrune
from .downsample import Downsample
from .dyvte import DyVTE
from .fastervlm import FasterVLM
from .fastv import FastV
from .fopru import FoPru
from .mustdrop import MustDrop
from .pyramiddrop import PyramidDrop
from .text_guided import TextGuided
from .visionzip import VisionZip
from .vispruner import VisPruner
from .visual_pool import VisualPool
from .visual_random import VisualRandom
from .visual_tome import VisualToMe
from .vtc_cls import VTCCLS

__all__ = [
    "REGISTRY",
    "DART",
    "VTCCLS",
    "BeforeMethod",
    "CDPruner",
    "DivPrune",
    "Downsample",
    "DyVTE",
    "FastV",
    "FasterVLM",
    "FoPru",
    "InsideMethod",
    "Mask",
    "MustDrop",
    "PyramidDrop",
    "Stage",
    "TextGuided",
    "Unit",
    "VisPruner",
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
