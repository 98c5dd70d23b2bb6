"""Which decoder families a press runs on, and why the others are refused (checked before any compute).

One place for the per-family rules. Attention with separate ``q_proj``/``k_proj``/``v_proj`` and rotary
positions (Llama, Qwen2/3, Mistral, Gemma) is scored by recomputing the window's queries (``kv/scoring.py``);
fused projections (GPT-2, GPT-NeoX, Phi-3) and q/k norms over the whole projection (OLMo 2) by the queries
the model attended with, recorded from its attention call (``kv/capture.py``). Sliding-window layers
(Gemma 2/3, Qwen2 with ``use_sliding_window``) are left as transformers keeps them -- already bounded at
``sliding_window - 1`` entries -- and the press compresses the full-attention layers (docs/KV.md, "Decoder
families"); a model whose every layer slides has nothing left to press and is refused, as are untested
fused families (Falcon, MPT).
"""

from __future__ import annotations

from torch import nn

from . import cache as kvc

SUPPORTED = (
    "Hugging Face Llama, Qwen2/Qwen3, Mistral without a sliding window, Gemma, Gemma 2/3 or Qwen2 "
    "(use_sliding_window) with sliding-window layers (their full-attention layers are compressed), and "
    "GPT-2, GPT-NeoX, Phi-3 and OLMo 2 (queries recorded from the attention call)"
)
# fused-projection families whose queries are recorded (kv/capture.py), by config.model_type
RECORDED = {"gpt2": "c_attn", "gpt_neox": "query_key_value", "phi3": "qkv_proj"}

# attribute of a fused attention projection -> the families using it (named when refused)
_FUSED = {
    "qkv_proj": "Phi-3 (fused qkv_proj)",
    "query_key_value": "GPT-NeoX/Falcon (fused query_key_value)",
    "c_attn": "GPT-2 (fused c_attn, absolute positions without RoPE)",
    "Wqkv": "MPT/ModernBERT-style (fused Wqkv)",
}


def refusal(model: nn.Module, what: str = "a press") -> str:
    """Why ``what`` cannot run on ``model``'s attention, naming the families that work."""
    name = type(model).__name__
    for attr, family in _FUSED.items():
        if any(hasattr(m, attr) for m in model.modules()):
            how = ("recomputes queries from separate q_proj/k_proj/v_proj" if what != "a press" else
                   "records queries only for the fused families it was tested on")
            return f"{name}: {family} is not supported by {what}, which {how}; supported: {SUPPORTED}"
    return f"{name}: no decoder self-attention with q_proj/k_proj/v_proj found; supported: {SUPPORTED}"


def _per_head_norms(module: nn.Module) -> bool:
    """True unless a q/k norm spans the whole projection (OLMo 2) rather than one head (Qwen3, Gemma 3):
    ``kv/scoring.py`` applies it per head, so such queries are recorded instead."""
    for attr in ("q_norm", "k_norm"):
        weight = getattr(getattr(module, attr, None), "weight", None)
        if weight is not None and weight.shape[-1] != module.head_dim:
            return False
    return True


def attention_layers(model: nn.Module) -> tuple[list[nn.Module], bool]:
    """The self-attention modules in layer order, and whether a press must record their queries (the fused
    families of :data:`RECORDED`, and q/k norms over the whole projection) rather than recompute them."""
    mods = [m for m in model.modules() if all(hasattr(m, a) for a in ("q_proj", "k_proj", "v_proj", "layer_idx"))]
    recorded = not mods or not all(_per_head_norms(m) for m in mods)
    if not mods:
        attr = RECORDED.get(getattr(model.config, "model_type", ""))
        mods = [m for m in model.modules() if attr and hasattr(m, attr) and hasattr(m, "layer_idx")
                and not getattr(m, "is_cross_attention", False)]
    if not mods:
        raise ValueError(refusal(model))
    return sorted(mods, key=lambda m: m.layer_idx), recorded


def press_modules(model: nn.Module, modules: list[nn.Module]) -> list[nn.Module]:
    """The attention modules (of ``modules``, in layer order) whose cache a press compresses: every
    full-attention layer; sliding-window layers stay as transformers keeps them. Refuses a model with none."""
    sliding = kvc.sliding_layers(model.config)
    kept = [m for m in modules if m.layer_idx not in sliding]
    if not kept:
        window = getattr(model.config, "sliding_window", None)
        raise ValueError(
            f"{type(model).__name__}: every layer keeps a sliding window of {window} tokens (its cache is already "
            "bounded at sliding_window - 1 entries) and a press compresses full-attention layers only, so there "
            "is nothing to press; for contexts shorter than the window, config.sliding_window=None gives the same "
            f"model. Supported: {SUPPORTED}"
        )
    return kept


def check_all_layers(model: nn.Module, what: str) -> None:
    """Refuse ``what`` (a method that reads or rewrites every layer's cache, e.g. KVzip's cross-layer
    ranking) on a model with sliding-window layers, before compute."""
    if kvc.sliding_layers(model.config):
        raise ValueError(f"{what} reads every layer's cache and does not support sliding-window layers yet "
                         f"({type(model).__name__}); use a scoring press (snapkv, tova, ...), which compresses "
                         "the full-attention layers")


def check_press(model: nn.Module, press) -> None:
    """Refuse, before compute, a press whose storage needs an attention the model cannot run: ragged
    (per-head) storage attends with SDPA, which has no logit soft-capping (Gemma 2)."""
    if press.ragged and getattr(model.config, "attn_logit_softcapping", None):
        raise ValueError(f"{press.name} stores entries per head and attends with SDPA, which has no logit "
                         f"soft-capping ({type(model).__name__} caps at {model.config.attn_logit_softcapping}); "
                         "use a dense press (snapkv, tova, h2o, ...) on this model")


def check_target(model: nn.Module, target: nn.Module) -> None:
    """Refuse a vision-language model whose language model has sliding-window layers (Gemma 3 VLM): its
    wrapper builds the per-layer masks itself, over tokens, which a compressed cache cannot follow."""
    if target is not model and kvc.sliding_layers(target.config):
        raise ValueError(f"{type(model).__name__}: its language model has sliding-window layers and the "
                         "vision-language wrapper builds their masks itself; a press is supported on the "
                         f"language model alone ({type(target).__name__}) or on {SUPPORTED}")


def check_recomputable(model: nn.Module, modules: list[nn.Module], what: str) -> None:
    """Refuse ``what`` (a method that recomputes queries from ``q_proj``: KVzip, GemFilter, the benchmark) on
    models whose queries a press records instead (q/k norms over the whole projection, OLMo 2)."""
    if not all(_per_head_norms(m) for m in modules):
        raise ValueError(f"{type(model).__name__}: its q/k norm spans the whole projection (OLMo 2), which {what} "
                         "cannot recompute per head; a scoring press (snapkv, tova, ...) records the model's "
                         "own queries and works")
