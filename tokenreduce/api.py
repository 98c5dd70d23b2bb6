"""``tokenreduce.patch`` / ``unpatch`` / ``patched`` / ``patch_info``: one entry point for every model family.

A vision-language model (LLaVA, LLaVA-NeXT, Qwen2-VL/2.5-VL) takes the visual-token methods of
:mod:`tokenreduce.vlm`; a diffusers U-Net or DiT (or a pipeline holding one), the methods of
:mod:`tokenreduce.diffusion`; any other model, the encoder methods of :mod:`tokenreduce.encoder`. A
method name from another family (a KV press, a prompt method, a visual method on a text encoder)
or something that is not a model fails before anything changes, saying which call to use instead.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from .diffusion import REGISTRY as DIFFUSION
from .diffusion import DiffusionHandle, find_diffusion, patch_diffusion
from .encoder.adapters import patching as encoder_patching
from .encoder.methods.base import REGISTRY as ENCODER
from .kv.presses.base import REGISTRY as PRESSES
from .prompt.methods import REGISTRY as PROMPT
from .vlm import VLMHandle, find_vlm, patch_vlm
from .vlm.methods import REGISTRY as VISUAL

_ATTR = encoder_patching.PATCH_ATTR


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        hint = "; pass the model, not its tokenizer or processor" if hasattr(model, "decode") else ""
        raise TypeError(f"tokenreduce.patch expects a torch.nn.Module (a Hugging Face or timm model), "
                        f"got {type(model).__name__}{hint}")


def _other_family(method: Any, is_vlm: bool) -> str | None:
    """Why ``method`` (a name) cannot go on this model, if it belongs to another family."""
    if not isinstance(method, str) or method in (VISUAL.names() if is_vlm else ENCODER.names()):
        return None
    if not is_vlm and method in VISUAL.names():
        return (f"{method!r} is a visual-token method for vision-language models (LLaVA, LLaVA-NeXT, "
                f"Qwen2-VL); this model is not one. Encoder methods: {', '.join(ENCODER.names())}")
    if method in DIFFUSION.names():
        return (f"{method!r} is a diffusion method for diffusers U-Nets and DiTs (UNet2DConditionModel, "
                f"DiTTransformer2DModel, PixArtTransformer2DModel, or a pipeline holding one); this model is not one")
    if method in PRESSES.names():
        return f"{method!r} is a KV-cache press: use tokenreduce.kv.apply_press(model, make_press({method!r}, ...))"
    if method in PROMPT.names():
        return f"{method!r} is a prompt-compression method: use tokenreduce.compress_prompt(..., method={method!r})"
    return None


def patch(model: nn.Module, method: Any, **params: Any) -> nn.Module:
    """Apply a token-reduction ``method`` (a registered name or a method object) to ``model`` in place;
    returns the model. Raises before changing anything (already patched, unsupported model, wrong
    family, bad parameters). See :func:`tokenreduce.encoder.adapters.patching.patch` for encoders.
    A diffusers pipeline is accepted too: its ``.unet`` / ``.transformer`` is patched, the pipeline returned."""
    denoiser = find_diffusion(model)
    if denoiser is not None:
        return _patch_diffusion(model, denoiser, method, params)
    _check_model(model)
    if getattr(model, _ATTR, None) is not None:
        raise RuntimeError("model is already patched; call tokenreduce.unpatch(model) first")
    is_vlm = find_vlm(model) is not None
    reason = _other_family(method, is_vlm)
    if reason:
        raise ValueError(reason)
    if is_vlm:
        object.__setattr__(model, _ATTR, patch_vlm(model, method, **params))
        return model
    return encoder_patching.patch(model, method, **params)


def _patch_diffusion(model: Any, denoiser: nn.Module, method: Any, params: dict[str, Any]) -> Any:
    if getattr(denoiser, _ATTR, None) is not None:
        raise RuntimeError("model is already patched; call tokenreduce.unpatch(model) first")
    others = ENCODER.names() + VISUAL.names() + PRESSES.names() + PROMPT.names()
    if isinstance(method, str) and method not in DIFFUSION.names() and method in others:
        raise ValueError(f"{method!r} is not a diffusion method; this is a diffusion model. "
                         f"Diffusion methods: {', '.join(DIFFUSION.names())}")
    object.__setattr__(denoiser, _ATTR, patch_diffusion(denoiser, method, **params))
    return model


def unpatch(model: nn.Module) -> nn.Module:
    """Remove a patch; the model is restored exactly. A no-op on an unpatched model."""
    denoiser = find_diffusion(model)
    handle = getattr(denoiser if denoiser is not None else model, _ATTR, None)
    if isinstance(handle, DiffusionHandle):  # instance forwards on the denoiser and its blocks
        handle.remove()
        object.__delattr__(denoiser, _ATTR)
        return model
    if isinstance(handle, VLMHandle):  # a VLM patch is a set of hooks
        handle.remove()
        object.__delattr__(model, _ATTR)
        return model
    return encoder_patching.unpatch(model)


def patch_info(model: nn.Module) -> Any:
    """The active patch of a model (family, method, ...), or None."""
    denoiser = find_diffusion(model)
    return getattr(denoiser if denoiser is not None else model, _ATTR, None)


@contextmanager
def patched(model: nn.Module, method: Any, **params: Any) -> Iterator[nn.Module]:
    """Context manager: ``with tokenreduce.patched(model, "tome", r=8): model(...)``."""
    patch(model, method, **params)
    try:
        yield model
    finally:
        unpatch(model)
