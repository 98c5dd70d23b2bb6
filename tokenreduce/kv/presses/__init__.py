"""Registered KV-cache presses, one per module (import order = registration), and their capability types."""

from .adakv import AdaKV
from .base import (
    ChannelPress,
    DecodeTimePress,
    LayerView,
    MergingPress,
    MixedPrecisionPress,
    Press,
    RaggedPress,
    ReconstructionPress,
    ScoringPress,
    label,
    make_press,
    parse_press,
    presses,
    register,
)
from .chunkkv import ChunkKV
from .common import BudgetPress, scorer_problem
from .decoding import DecodingPress
from .duo_attention import DuoAttention
from .expected_attention import ExpectedAttention
from .h2o import H2O
from .key_norm import KeyNorm
from .keydiff import KeyDiff
from .keyformer import Keyformer
from .kvzip import KVzip
from .merge import MergePress
from .pyramidkv import PyramidKV
from .qfilters import QFilters
from .random_press import RandomPress
from .rkv import RKV
from .snapkv import SnapKV
from .streaming_llm import StreamingLLM
from .think import ThinK
from .tova import TOVA
from .zipcache import ZipCache

__all__ = [
    "H2O", "RKV", "TOVA", "AdaKV", "BudgetPress", "ChannelPress", "ChunkKV", "DecodeTimePress", "DecodingPress",
    "DuoAttention", "ExpectedAttention", "KVzip", "KeyDiff", "KeyNorm", "Keyformer", "LayerView",
    "MergePress", "MergingPress", "MixedPrecisionPress", "Press",
    "PyramidKV", "QFilters", "RaggedPress", "RandomPress", "ReconstructionPress", "ScoringPress", "SnapKV",
    "StreamingLLM", "ThinK", "ZipCache", "label", "make_press", "parse_press", "presses", "register", "scorer_problem",
]
