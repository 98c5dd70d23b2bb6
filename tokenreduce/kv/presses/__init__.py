"""Registered KV-cache presses, one per module (import order = registration), and their capability types."""

from .adakv import AdaKV
from .base import (
    DecodeTimePress,
    LayerView,
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
from .common import BudgetPress, scorer_problem
from .decoding import DecodingPress
from .h2o import H2O
from .key_norm import KeyNorm
from .keyformer import Keyformer
from .kvzip import KVzip
from .pyramidkv import PyramidKV
from .random_press import RandomPress
from .snapkv import SnapKV
from .streaming_llm import StreamingLLM
from .tova import TOVA
from .zipcache import ZipCache

__all__ = [
    "H2O", "TOVA", "AdaKV", "BudgetPress", "DecodeTimePress", "DecodingPress", "KVzip", "KeyNorm", "Keyformer",
    "LayerView", "MixedPrecisionPress", "Press", "PyramidKV", "RaggedPress", "RandomPress", "ReconstructionPress",
    "ScoringPress", "SnapKV", "StreamingLLM", "ZipCache", "label", "make_press", "parse_press", "presses", "register",
    "scorer_problem",
]
