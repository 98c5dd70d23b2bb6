"""Token reduction for diffusion models: tomesd, its similarity-threshold variant, and ToDo, on
diffusers U-Nets (``UNet2DConditionModel``) and DiT-style transformers (``DiTTransformer2DModel``,
``PixArtTransformer2DModel``).

``tokenreduce.patch(pipe.unet, "tomesd", ratio=0.5)`` (or ``patch(pipe, ...)``) routes here. Nothing in
this package imports diffusers: models are recognised by class name. See docs/DIFFUSION.md.
"""

from .adapter import DiffusionHandle, find_diffusion, patch_diffusion
from .methods import REGISTRY, DiffusionMethod, diffusion_methods, make_diffusion_method, register

__all__ = ["REGISTRY", "DiffusionHandle", "DiffusionMethod", "diffusion_methods", "find_diffusion",
           "make_diffusion_method", "patch_diffusion", "register"]
