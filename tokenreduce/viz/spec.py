"""What a vision model expects: input size, patch size, prefix tokens, pixel normalization.

Read from the model itself (Hugging Face config or timm attributes), so ``visualize`` needs no
processor. Normalization: explicit mean/std, else the model folder's ``preprocessor_config.json``,
else timm's ``pretrained_cfg``, else the family's usual statistics (ImageNet; CLIP's for CLIP;
0.5 for SigLIP).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import NamedTuple

from torch import nn

from ..encoder.adapters.patching import resolve_family

IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
CLIP = ((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))
HALF = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class VisionSpec(NamedTuple):
    image_size: int
    patch_size: int
    prefix: int  # tokens before the patches ([CLS], distillation, registers)
    mean: tuple[float, ...]
    std: tuple[float, ...]
    kind: str  # "hf" or "timm"
    channels: int = 3  # input channels: 1 for grayscale models (the bundled vit_digits), else RGB


def _pair(v) -> int:
    if isinstance(v, (tuple, list)):
        if len(set(v)) != 1:
            raise ValueError(f"visualize supports square images and patches, got {tuple(v)}")
        return int(v[0])
    return int(v)


def _processor_stats(model: nn.Module) -> tuple | None:
    path = getattr(getattr(model, "config", None), "name_or_path", "") or ""
    cfg = Path(path) / "preprocessor_config.json"
    if path and cfg.is_file():
        d = json.loads(cfg.read_text())
        if "image_mean" in d and "image_std" in d:
            return tuple(d["image_mean"]), tuple(d["image_std"])
    return None


def vision_spec(model: nn.Module, image_size: int | None = None, mean=None, std=None) -> VisionSpec:
    """The input geometry and normalization of ``model`` (a supported vision family)."""
    fam, _ = resolve_family(model)
    prefix = fam.default_protected(model)
    if fam.name in ("timm-vit", "timm-eva"):
        owner = next(m for m in model.modules() if hasattr(m, "patch_embed") and hasattr(m, "blocks"))
        size, patch = _pair(owner.patch_embed.img_size), _pair(owner.patch_embed.patch_size)
        pc = getattr(owner, "pretrained_cfg", None) or {}
        stats = (tuple(pc["mean"]), tuple(pc["std"])) if "mean" in pc and "std" in pc else IMAGENET
        kind = "timm"
        channels = int(getattr(owner.patch_embed.proj, "in_channels", 3))
        if image_size not in (None, size) and not getattr(owner, "dynamic_img_size", False):
            raise ValueError(f"this timm model takes {size}px images only (created without dynamic_img_size)")
    elif fam.name in ("hf-vit", "hf-clip-vision", "hf-dinov2", "hf-siglip-vision"):
        cfg = model.config
        cfg = getattr(cfg, "vision_config", None) or cfg
        if not hasattr(cfg, "image_size"):
            raise TypeError(f"visualize needs fixed-size image inputs; {type(model).__name__} has no image_size")
        size, patch = _pair(cfg.image_size), _pair(cfg.patch_size)
        default = {"hf-clip-vision": CLIP, "hf-siglip-vision": HALF}.get(fam.name, IMAGENET)
        channels = int(getattr(cfg, "num_channels", 3))
        stats = _processor_stats(model) or (default if channels == 3 else ((0.5,) * channels, (0.5,) * channels))
        kind = "hf"
    else:
        raise TypeError(f"visualize supports vision encoders; {type(model).__name__} is a {fam.name} model")
    if image_size is not None:
        if image_size % patch:
            raise ValueError(f"image_size must be a multiple of the patch size {patch}, got {image_size}")
        size = image_size
    mean, std = tuple(mean or stats[0]), tuple(std or stats[1])
    if len(mean) != channels or len(std) != channels or min(std) <= 0:
        raise ValueError(f"mean and std need {channels} values each (the model's input channels; std > 0), "
                         f"got mean={mean}, std={std}")
    return VisionSpec(size, patch, prefix, mean, std, kind, channels)
