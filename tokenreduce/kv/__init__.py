"""KV-cache compression ("presses") for Hugging Face decoder LLMs.

    from tokenreduce.kv import AdaKV, SnapKV, apply_press, generate, make_press
    generate(model, tok, context, question, press="snapkv", keep=0.25)
    generate(model, tok, context, question, press=AdaKV(keep=0.25, scorer=SnapKV(window=64, kernel=11)))
    with apply_press(model, make_press("streaming_llm", keep=0.25)):
        model.generate(**inputs)
"""

from .cache import kv_bytes
from .gemfilter import gemfilter_ids, gemfilter_select
from .generate import generate, generate_ids
from .hooks import apply_press
from .presses import (
    H2O,
    RKV,
    TOVA,
    AdaKV,
    BudgetPress,
    ChannelPress,
    ChunkKV,
    DecodeTimePress,
    DecodingPress,
    DuoAttention,
    ExpectedAttention,
    KeyDiff,
    Keyformer,
    KeyNorm,
    KVzip,
    LayerView,
    MergePress,
    MergingPress,
    MixedPrecisionPress,
    Press,
    PyramidKV,
    QFilters,
    RaggedPress,
    RandomPress,
    ReconstructionPress,
    ScoringPress,
    SnapKV,
    StreamingLLM,
    ThinK,
    ZipCache,
    make_press,
    presses,
    register,
)

__all__ = [
    "H2O", "RKV", "TOVA", "AdaKV", "BudgetPress", "ChannelPress", "ChunkKV", "DecodeTimePress", "DecodingPress",
    "DuoAttention", "ExpectedAttention", "KVzip", "KeyDiff", "KeyNorm", "Keyformer", "LayerView",
    "MergePress", "MergingPress", "MixedPrecisionPress", "Press",
    "PyramidKV", "QFilters", "RaggedPress", "RandomPress", "ReconstructionPress", "ScoringPress", "SnapKV",
    "StreamingLLM", "ThinK", "ZipCache", "apply_press", "gemfilter_ids", "gemfilter_select",
    "generate", "generate_ids", "kv_bytes", "make_press", "presses", "register",
]
