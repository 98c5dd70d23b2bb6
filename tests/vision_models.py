"""Tiny random-weight vision towers for the family tests (32×32 images, 4×4 patches).

DINOv2 (+ registers), SigLIP / SigLIP 2, BEiT, Data2Vec-vision and ViT-MAE.
"""

from __future__ import annotations

import torch
from models import HID, jitter_norms
from transformers import (
    BeitConfig,
    BeitModel,
    Data2VecVisionConfig,
    Data2VecVisionModel,
    Dinov2Config,
    Dinov2Model,
    Dinov2WithRegistersConfig,
    Dinov2WithRegistersModel,
    Siglip2VisionConfig,
    Siglip2VisionModel,
    SiglipConfig,
    SiglipModel,
    SiglipVisionConfig,
    SiglipVisionModel,
    ViTMAEConfig,
    ViTMAEModel,
)

IMG = dict(image_size=32, patch_size=4)
DINO = dict(hidden_size=32, num_hidden_layers=4, num_attention_heads=4, mlp_ratio=2, layerscale_value=0.5)


def _jitter_layerscale(model: torch.nn.Module) -> torch.nn.Module:
    """Random LayerScale gains (fresh ones are all equal), so the tests see a non-trivial lambda."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lambda1"):
                p.copy_(0.5 + 0.3 * torch.randn(p.shape, generator=g))
    return jitter_norms(model)


def dinov2(cls=Dinov2Model, impl: str = "sdpa", swiglu: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = Dinov2Config(**IMG, **DINO, use_swiglu_ffn=swiglu, num_labels=5, attn_implementation=impl)
    return _jitter_layerscale(cls(cfg))


def dinov2_registers(registers: int = 4) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = Dinov2WithRegistersConfig(**IMG, **DINO, num_register_tokens=registers, attn_implementation="sdpa")
    model = Dinov2WithRegistersModel(cfg)
    with torch.no_grad():  # fresh register tokens are zeros: make them distinct
        model.embeddings.register_tokens.normal_(generator=torch.Generator().manual_seed(3))
    return _jitter_layerscale(model)


def siglip_vision(head: bool = True, impl: str = "sdpa") -> torch.nn.Module:
    torch.manual_seed(0)
    return jitter_norms(
        SiglipVisionModel(SiglipVisionConfig(**IMG, **HID, vision_use_head=head, attn_implementation=impl))
    )


def siglip_full() -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = SiglipConfig(text_config=dict(vocab_size=120, **HID), vision_config=dict(**IMG, **HID))
    return jitter_norms(SiglipModel(cfg))


def siglip2_vision() -> torch.nn.Module:
    """SigLIP 2 (NaFlex): patchified inputs with a padding mask; up to 64 patches of 4×4."""
    torch.manual_seed(0)
    cfg = Siglip2VisionConfig(patch_size=4, num_patches=64, attn_implementation="sdpa", **HID)
    return jitter_norms(Siglip2VisionModel(cfg))


def siglip2_inputs(shapes: tuple[tuple[int, int], ...] = ((8, 8), (6, 5), (4, 4)), seed: int = 0) -> dict:
    """A padded NaFlex batch: image i has shapes[i] patches (rows, cols), padded to the longest."""
    g = torch.Generator().manual_seed(seed)
    n = max(h * w for h, w in shapes)
    pv = torch.randn(len(shapes), n, 3 * 4 * 4, generator=g)
    mask = torch.zeros(len(shapes), n, dtype=torch.long)
    for i, (h, w) in enumerate(shapes):
        mask[i, : h * w] = 1
    pv = pv * mask[..., None]
    return {"pixel_values": pv, "pixel_attention_mask": mask, "spatial_shapes": torch.tensor(shapes)}


BEIT = dict(layer_scale_init_value=0.5, use_absolute_position_embeddings=False)


def _random_tables(model: torch.nn.Module) -> torch.nn.Module:
    """Random relative-bias tables and LayerScale gains (fresh ones are zeros / equal), so positions matter."""
    g = torch.Generator().manual_seed(4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif name.endswith(("lambda_1", "lambda_2")):
                p.copy_(0.5 + 0.3 * torch.randn(p.shape, generator=g))
    return jitter_norms(model)


def beit(cls=BeitModel, impl: str = "sdpa", own: bool = True, shared: bool = False, **extra) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = BeitConfig(**IMG, **HID, **BEIT, use_relative_position_bias=own, use_shared_relative_position_bias=shared,
                     num_labels=5, attn_implementation=impl, **extra)
    return _random_tables(cls(cfg))


def data2vec(impl: str = "sdpa", own: bool = True, shared: bool = False) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = Data2VecVisionConfig(**IMG, **HID, **BEIT, use_relative_position_bias=own,
                               use_shared_relative_position_bias=shared, attn_implementation=impl)
    return _random_tables(Data2VecVisionModel(cfg, add_pooling_layer=True))


def mae(cls=ViTMAEModel) -> torch.nn.Module:
    torch.manual_seed(0)
    cfg = ViTMAEConfig(**IMG, **HID, mask_ratio=0.0, decoder_hidden_size=16, decoder_num_hidden_layers=1,
                       decoder_num_attention_heads=2, decoder_intermediate_size=32, attn_implementation="sdpa")
    return jitter_norms(cls(cfg))
