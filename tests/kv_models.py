"""Tiny random-weight decoder LMs of the supported families (GQA everywhere), for fast KV tests."""

from __future__ import annotations

import torch
from transformers import (
    GemmaConfig,
    GemmaForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tokenreduce.kv import apply_press, generate_ids, make_press
from tokenreduce.kv import cache as kvc
from tokenreduce.kv.session import Session, prefill

COMMON = dict(
    vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
    num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
)
FAMILIES = {
    "llama": (LlamaConfig, LlamaForCausalLM, {}),
    "qwen2": (Qwen2Config, Qwen2ForCausalLM, {}),
    "mistral": (MistralConfig, MistralForCausalLM, {"sliding_window": None}),
    "gemma": (GemmaConfig, GemmaForCausalLM, {"head_dim": 8}),
}


def peaked(model_cls, cfg, seed: int, weights: tuple[str, ...] = ("q_proj.weight", "k_proj.weight"),
           scale: float = 6.0) -> torch.nn.Module:
    """``model_cls(cfg)`` seeded, with its query/key projections scaled up so attention is peaked (scores
    discriminate), in eval mode."""
    torch.manual_seed(seed)
    model = model_cls(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(weights):
                p.mul_(scale)
    return model.eval()


def tiny_lm(family: str = "llama", impl: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A tiny causal LM with larger-than-default init so attention is peaked (scores discriminate)."""
    cfg_cls, model_cls, extra = FAMILIES[family]
    return peaked(model_cls, cfg_cls(**COMMON, **extra, attn_implementation=impl), seed)


def random_ids(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, COMMON["vocab_size"], (batch, n), generator=g)


def compressed_session(model, ids: torch.Tensor, press, mask: torch.Tensor | None = None):
    """A session whose cache holds ``ids`` prefilled and compressed once by ``press``."""
    s = Session(model, kvc.new_cache(model), ids[:, :0])
    with torch.no_grad(), apply_press(model, press, auto=False) as runner:
        prefill(s, ids, torch.ones_like(ids) if mask is None else mask, runner)
    return s


def assert_keep_one_exact_and_loops_agree(model) -> None:
    """keep=1 reproduces the unpressed output through our ``generate_ids`` and ``model.generate`` for three
    press kinds; compressed, ``model.generate`` and our loop give the same tokens."""
    ids, mask, q = padded_batch()
    kw = dict(input_ids=ids, attention_mask=mask, max_new_tokens=5, do_sample=False, pad_token_id=0)
    base = generate_ids(model, ids, mask, q, max_new_tokens=4)
    with torch.no_grad():
        ref = model.generate(**kw)
    for name in ("snapkv", "h2o", "streaming_llm"):
        assert torch.equal(generate_ids(model, ids, mask, q, make_press(name, keep=1.0), max_new_tokens=4), base), name
        with torch.no_grad(), apply_press(model, make_press(name, keep=1.0)):
            assert torch.equal(model.generate(**kw), ref), name
    with torch.no_grad(), apply_press(model, make_press("snapkv", keep=0.3)):
        small = model.generate(**kw)
    ours = generate_ids(model, ids, mask, None, make_press("snapkv", keep=0.3), max_new_tokens=5)
    assert torch.equal(small[:, ids.shape[1]:], ours)


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two 40-token contexts, the second left-padded by 9, and two 5-token questions."""
    ids = random_ids(2, 40)
    mask = torch.ones_like(ids)
    mask[1, :9] = 0  # left padding
    return ids, mask, random_ids(2, 5, seed=1)


# Sliding-window families: tiny windows so a 40-token context runs past them; layer types mixed.
SLIDING = {
    "gemma2": ("Gemma2Config", "Gemma2ForCausalLM", {"head_dim": 8, "sliding_window": 8}),
    "gemma3": ("Gemma3TextConfig", "Gemma3ForCausalLM", {
        "head_dim": 8, "sliding_window": 8,
        "layer_types": ["sliding_attention", "full_attention", "sliding_attention"]}),
    "qwen2_sliding": ("Qwen2Config", "Qwen2ForCausalLM", {
        "use_sliding_window": True, "sliding_window": 8, "max_window_layers": 1}),
}


def tiny_sliding_lm(family: str, seed: int = 0) -> torch.nn.Module:
    """A tiny causal LM of a family with sliding-window layers (window 8), initialised like :func:`tiny_lm`
    (Gemma 2 runs eager attention only, the others SDPA)."""
    import transformers

    cfg_name, model_name, extra = SLIDING[family]
    impl = "eager" if family == "gemma2" else "sdpa"
    cfg = getattr(transformers, cfg_name)(**COMMON, **extra, attn_implementation=impl)
    return peaked(getattr(transformers, model_name), cfg, seed)


def tiny_mistral_sliding(window: int = 8) -> torch.nn.Module:
    """Mistral with its sliding window on (every layer slides)."""
    cfg = MistralConfig(**COMMON, sliding_window=window, attn_implementation="sdpa")
    torch.manual_seed(0)
    return MistralForCausalLM(cfg).eval()


# Fused-projection families (queries recorded from the attention call): config class, model class, config.
FUSED = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", dict(
        vocab_size=97, n_embd=48, n_layer=3, n_head=6, n_positions=512, pad_token_id=0)),
    "gpt_neox": ("GPTNeoXConfig", "GPTNeoXForCausalLM", dict(
        vocab_size=97, hidden_size=48, intermediate_size=96, num_hidden_layers=3, num_attention_heads=6,
        max_position_embeddings=512, pad_token_id=0)),  # partial rotary (rotary_pct 0.25)
    "phi3": ("Phi3Config", "Phi3ForCausalLM", dict(COMMON, sliding_window=None)),
}


def tiny_fused_lm(family: str, impl: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A tiny causal LM with a fused q/k/v projection; the projection is scaled up so attention is peaked."""
    import transformers

    cfg_name, model_name, kw = FUSED[family]
    cfg = getattr(transformers, cfg_name)(**kw, attn_implementation=impl)
    fused = ("c_attn.weight", "query_key_value.weight", "qkv_proj.weight")
    return peaked(getattr(transformers, model_name), cfg, seed, weights=fused, scale=4.0)


# Rotary families with q/k norms or rope scaling: (config class, model class, extra config).
NORMED = {
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", {"head_dim": 8}),  # per-head q/k norm: recomputed
    "olmo2": ("Olmo2Config", "Olmo2ForCausalLM", {}),  # q/k norm over the whole projection: recorded
    "llama3": ("LlamaConfig", "LlamaForCausalLM", {"rope_scaling": {  # Llama-3 rope scaling
        "rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
        "original_max_position_embeddings": 64}}),
}


def tiny_normed_lm(family: str, impl: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A tiny causal LM of :data:`NORMED`, initialised like :func:`tiny_lm`."""
    import transformers

    cfg_name, model_name, extra = NORMED[family]
    cfg = getattr(transformers, cfg_name)(**COMMON, **extra, attn_implementation=impl)
    return peaked(getattr(transformers, model_name), cfg, seed)
