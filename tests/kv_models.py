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


def tiny_lm(family: str = "llama", impl: str = "sdpa", seed: int = 0) -> torch.nn.Module:
    """A tiny causal LM with larger-than-default init so attention is peaked (scores discriminate)."""
    cfg_cls, model_cls, extra = FAMILIES[family]
    cfg = cfg_cls(**COMMON, **extra, attn_implementation=impl)
    torch.manual_seed(seed)
    model = model_cls(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(6.0)
    return model.eval()


def random_ids(batch: int, n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(1, COMMON["vocab_size"], (batch, n), generator=g)


def padded_batch() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Two 40-token contexts, the second left-padded by 9, and two 5-token questions."""
    ids = random_ids(2, 40)
    mask = torch.ones_like(ids)
    mask[1, :9] = 0  # left padding
    return ids, mask, random_ids(2, 5, seed=1)
