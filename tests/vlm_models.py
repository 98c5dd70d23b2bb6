"""Tiny random-weight vision-language models of the real architectures, with matching inputs."""

from __future__ import annotations

import torch
from transformers import (
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
)
from transformers.image_processing_utils import select_best_resolution

IMAGE_TOKEN = 90
VOCAB = 97


def _peak(model: torch.nn.Module, scale: float = 4.0) -> None:
    """Larger q/k weights so attention is peaked and scores discriminate (random init is near-uniform)."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(scale)


def tiny_llava(impl: str = "sdpa", seed: int = 0, image_size: int = 32, patch: int = 4, layers: int = 4):
    """LLaVA-1.5-shaped: CLIP vision tower, 2-layer MLP projector, Llama decoder; (S/p)^2 tokens per image."""
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        image_size=image_size, patch_size=patch, projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=512, pad_token_id=0,
    )
    cfg = LlavaConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN)
    return _build(LlavaForConditionalGeneration, cfg, impl, seed)


def _build(model_cls, cfg, impl: str, seed: int):
    """A seeded, peaked model with ``impl`` attention in every tower."""
    for c in (cfg, cfg.text_config, cfg.vision_config):
        c._attn_implementation = impl
    torch.manual_seed(seed)
    model = model_cls(cfg).eval()
    _peak(model)
    return model


def llava_inputs(model, n_images: int = 1, prefix: int = 3, question: int = 6, batch: int = 1, seed: int = 1):
    """input_ids with one run of image tokens per image (text before, between and after), and pixels."""
    cfg = model.config.vision_config
    n_img = (cfg.image_size // cfg.patch_size) ** 2
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        parts = [torch.randint(1, 80, (prefix,), generator=g)]
        for _ in range(n_images):
            parts += [torch.full((n_img,), IMAGE_TOKEN), torch.randint(1, 80, (2,), generator=g)]
        parts.append(torch.randint(1, 80, (question,), generator=g))
        rows.append(torch.cat(parts))
    ids = torch.stack(rows)
    pixels = torch.randn(batch * n_images, 3, cfg.image_size, cfg.image_size, generator=g)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels}


def tiny_qwen2vl(impl: str = "sdpa", seed: int = 0, layers: int = 4):
    """Qwen2-VL-shaped: windowless ViT with 2x2 patch merger, Qwen2 decoder with 3-D M-RoPE."""
    cfg = Qwen2VLConfig(
        text_config=dict(
            vocab_size=VOCAB + 60, hidden_size=48, intermediate_size=96, num_hidden_layers=layers,
            num_attention_heads=6, num_key_value_heads=2, max_position_embeddings=512,
            rope_parameters={"rope_type": "default", "mrope_section": [2, 1, 1], "rope_theta": 10000.0},
        ),
        vision_config=dict(depth=2, embed_dim=32, hidden_size=48, num_heads=4, mlp_ratio=2, patch_size=4,
                           spatial_merge_size=2, temporal_patch_size=2, in_channels=3),
        image_token_id=VOCAB + 1, video_token_id=VOCAB + 2, vision_start_token_id=VOCAB + 3,
        vision_end_token_id=VOCAB + 4,
    )
    cfg._attn_implementation = impl
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).eval()
    _peak(model)
    return model


def qwen2vl_inputs(model, grids=((1, 8, 12),), prefix: int = 3, question: int = 6, batch: int = 1, seed: int = 1):
    """input_ids with <vision_start> image tokens <vision_end> per image, flattened patches and grid_thw."""
    cfg = model.config
    vc = cfg.vision_config
    m2 = vc.spatial_merge_size**2
    g = torch.Generator().manual_seed(seed)
    rows, tok_types = [], []
    for _ in range(batch):
        parts = [torch.randint(1, 80, (prefix,), generator=g)]
        for t, h, w in grids:
            n = t * h * w // m2
            parts += [torch.tensor([cfg.vision_start_token_id]), torch.full((n,), cfg.image_token_id),
                      torch.tensor([cfg.vision_end_token_id])]
        parts.append(torch.randint(1, 80, (question,), generator=g))
        row = torch.cat(parts)
        rows.append(row)
        tok_types.append((row == cfg.image_token_id).long())
    ids = torch.stack(rows)
    patch_dim = vc.in_channels * vc.temporal_patch_size * vc.patch_size**2
    n_patches = sum(t * h * w for t, h, w in grids) * batch
    pixels = torch.randn(n_patches, patch_dim, generator=g)
    thw = torch.tensor([list(x) for x in grids] * batch)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels,
            "image_grid_thw": thw, "mm_token_type_ids": torch.stack(tok_types)}


# ---- LLaVA-NeXT (AnyRes) ------------------------------------------------------------------------------
NEXT_PINPOINTS = [[16, 32], [32, 16], [32, 32], [48, 16], [16, 48]]


def tiny_llava_next(impl: str = "sdpa", seed: int = 0, layers: int = 4):
    """LLaVA-NeXT-shaped: CLIP tower on 16x16 crops (4x4 tokens each), AnyRes pinpoints up to 3 crops a side."""
    vision = CLIPVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        image_size=16, patch_size=4, projection_dim=32,
    )
    text = LlamaConfig(
        vocab_size=VOCAB, hidden_size=48, intermediate_size=96, num_hidden_layers=layers, num_attention_heads=6,
        num_key_value_heads=2, max_position_embeddings=1024, pad_token_id=0,
    )
    cfg = LlavaNextConfig(vision_config=vision, text_config=text, image_token_id=IMAGE_TOKEN,
                          image_grid_pinpoints=NEXT_PINPOINTS)
    return _build(LlavaNextForConditionalGeneration, cfg, impl, seed)


def next_num_tokens(cfg, height: int, width: int) -> tuple[int, int]:
    """(placeholder tokens, crops incl. the base) of an image of that size, computed as the processor does."""
    s = cfg.vision_config.image_size
    g = s // cfg.vision_config.patch_size
    best_h, best_w = select_best_resolution((height, width), cfg.image_grid_pinpoints)
    cur_h, cur_w = g * (best_h // s), g * (best_w // s)
    if width / height > cur_w / cur_h:
        pad = (cur_h - int(round(height * cur_w / width, 7))) // 2
        cur_h -= 2 * pad
    else:
        pad = (cur_w - int(round(width * cur_h / height, 7))) // 2
        cur_w -= 2 * pad
    return g * g + cur_h * (cur_w + 1), 1 + (best_h // s) * (best_w // s)


def llava_next_inputs(model, sizes=((30, 60), (50, 20)), prefix: int = 3, question: int = 6, batch: int = 1,
                      seed: int = 1):
    """input_ids with one placeholder run per image (its AnyRes token count), image_sizes, and padded 5-D pixels."""
    cfg = model.config
    s = cfg.vision_config.image_size
    counts = [next_num_tokens(cfg, h, w) for h, w in sizes]
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        parts = [torch.randint(1, 80, (prefix,), generator=g)]
        for n, _crops in counts:
            parts += [torch.full((n,), IMAGE_TOKEN), torch.randint(1, 80, (2,), generator=g)]
        parts.append(torch.randint(1, 80, (question,), generator=g))
        rows.append(torch.cat(parts))
    ids = torch.stack(rows)
    n_max = max(c for _n, c in counts)
    pixels = torch.randn(batch * len(sizes), n_max, 3, s, s, generator=g)
    image_sizes = torch.tensor([list(x) for x in sizes] * batch)
    mask = torch.ones_like(ids)
    return {"input_ids": ids, "attention_mask": mask, "pixel_values": pixels, "image_sizes": image_sizes}
