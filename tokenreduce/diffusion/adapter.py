"""Attach a diffusion method to a diffusers model: U-Nets (``UNet2DConditionModel``: SD 1.x/2.x, and
SDXL's layout) and DiT-style transformers (``DiTTransformer2DModel``, ``PixArtTransformer2DModel``).

All of them build their transformer blocks from diffusers' ``BasicTransformerBlock``, whose
sub-modules ``attn1`` (self-attention), ``attn2`` (cross-attention) and ``ff`` (MLP) the methods wrap.
Patching sets ``forward`` as an instance attribute on the model, each block and each wrapped
sub-module; every wrapper calls the class's own ``forward`` at call time (no copy of an old forward),
and ``remove`` deletes the attributes, which restores the modules exactly. Families are recognised
by class name, so nothing here imports diffusers.

Per-call state (the latent grid and each row's timestep, then the current block's plan) lives in
``ContextVar`` s set and reset around the call: no module attribute changes during a forward.
"""

from __future__ import annotations

import inspect
import math
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from ..core.assign import apply_assignment, restore
from .methods import DiffusionMethod, Plan, make_diffusion_method

_CALL: ContextVar[dict[int, CallState] | None] = ContextVar("tr_diffusion_call", default=None)
_BLOCK: ContextVar[tuple[nn.Module, Plan] | None] = ContextVar("tr_diffusion_block", default=None)

UNETS = ("UNet2DConditionModel",)
TRANSFORMERS = ("DiTTransformer2DModel", "PixArtTransformer2DModel")
SUBMODULES = ("attn1", "attn2", "ff")


def _named(obj: Any, names: tuple[str, ...]) -> bool:
    return any(c.__name__ in names for c in type(obj).__mro__)


def find_diffusion(obj: Any) -> nn.Module | None:
    """The denoiser to patch: ``obj`` itself if it is a supported U-Net/transformer, or a pipeline's
    ``.unet`` / ``.transformer``; None otherwise."""
    if isinstance(obj, nn.Module) and _named(obj, UNETS + TRANSFORMERS):
        return obj
    if not isinstance(obj, nn.Module):
        for attr in ("unet", "transformer"):
            part = getattr(obj, attr, None)
            if isinstance(part, nn.Module) and _named(part, UNETS + TRANSFORMERS):
                return part
    return None


def timestep_keys(timestep: Any, batch: int, device: torch.device) -> Tensor:
    """(B,) int64 per-row key of a call: the timestep's value (the bits of a float timestep), so both
    halves of a classifier-free-guidance batch, which share a timestep, share their random choices."""
    if timestep is None:
        return torch.zeros(batch, dtype=torch.int64, device=device)
    t = torch.as_tensor(timestep, device=device).reshape(-1)
    if t.is_floating_point():
        t = t.to(torch.float32).contiguous().view(torch.int32)
    t = t.to(torch.int64)
    if t.numel() == batch:
        return t
    return t[:1].expand(batch) if t.numel() >= 1 else torch.zeros(batch, dtype=torch.int64, device=device)


def level_grid(base: tuple[int, int], n: int, max_downsample: int) -> tuple[int, int] | None:
    """The grid of a block with ``n`` tokens in a model whose finest grid is ``base``, if its downsampling
    (tomesd's rule: ceil(sqrt(H*W // n))) is at most ``max_downsample``."""
    hb, wb = base
    if n <= 0 or n > hb * wb:
        return None
    ds = math.ceil(math.sqrt((hb * wb) // n))
    if ds > max_downsample:
        return None
    h, w = math.ceil(hb / ds), math.ceil(wb / ds)
    return (h, w) if h * w == n else None


@dataclass
class CallState:
    """One forward of a patched model: its finest token grid, each row's key (timestep), and the
    assignment of a merge that spans blocks (set at its first block, used at its last)."""

    base: tuple[int, int]
    keys: Tensor
    span: tuple[Tensor, int] | None = None


@dataclass
class DiffusionHandle:
    """An active diffusion patch: the method, the family ("unet" or "transformer"), the patched modules."""

    method: DiffusionMethod
    family: str
    model: nn.Module
    blocks: list[nn.Module]
    modules: list[nn.Module] = field(default_factory=list)

    def remove(self) -> None:
        for m in self.modules:
            if "forward" in vars(m):
                del m.forward
        self.modules.clear()


def _install(handle: DiffusionHandle, module: nn.Module, wrapper: Any) -> None:
    object.__setattr__(module, "forward", wrapper)
    handle.modules.append(module)


def _model_forward(handle: DiffusionHandle, model: nn.Module, patch: int):
    sig = inspect.signature(type(model).forward)
    first = list(sig.parameters)[1]  # "sample" (U-Net) or "hidden_states" (transformers)

    def forward(*args: Any, **kwargs: Any) -> Any:
        bound = sig.bind(model, *args, **kwargs).arguments
        sample = bound.get(first)
        if not isinstance(sample, Tensor) or sample.dim() != 4:
            return type(model).forward(model, *args, **kwargs)
        base = (sample.shape[-2] // patch, sample.shape[-1] // patch)
        keys = timestep_keys(bound.get("timestep"), sample.shape[0], sample.device)
        token = _CALL.set({**(_CALL.get() or {}), id(handle): CallState(base, keys)})
        try:
            return type(model).forward(model, *args, **kwargs)
        finally:
            _CALL.reset(token)

    return forward


def _span_forward(handle: DiffusionHandle, block: nn.Module, index: int, span: tuple[int, int]):
    """A block of a merge spanning blocks ``span``: merge the input at the first, unmerge the output at the last."""

    def forward(*args: Any, **kwargs: Any) -> Any:
        call = (_CALL.get() or {}).get(id(handle))
        if call is None:
            return type(block).forward(block, *args, **kwargs)
        if index == span[0]:
            call.span = None
            x = args[0] if args else kwargs.get("hidden_states")
            if isinstance(x, Tensor) and x.dim() == 3 and call.keys.shape[0] == x.shape[0]:
                grid = level_grid(call.base, x.shape[1], handle.method.max_downsample)
                call.span = None if grid is None else handle.method.plan_span(x, grid, call.keys)
            if call.span is not None:
                dst, k = call.span
                merged, _ = apply_assignment(x, torch.ones(dst.shape, device=x.device), dst, k)
                args, kwargs = ((merged, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": merged})
        out = type(block).forward(block, *args, **kwargs)
        if index == span[1] and call.span is not None:
            out, call.span = restore(out, call.span[0]), None
        return out

    return forward


def _block_forward(handle: DiffusionHandle, block: nn.Module, index: int):
    def forward(*args: Any, **kwargs: Any) -> Any:
        call = (_CALL.get() or {}).get(id(handle))
        x = args[0] if args else kwargs.get("hidden_states")
        plan = None
        if call is not None and isinstance(x, Tensor) and x.dim() == 3:
            grid = level_grid(call.base, x.shape[1], handle.method.max_downsample)
            if grid is not None and call.keys.shape[0] == x.shape[0]:
                plan = handle.method.plan(x, grid, call.keys, index)
        if plan is None:
            return type(block).forward(block, *args, **kwargs)
        token = _BLOCK.set((block, plan))
        try:
            return type(block).forward(block, *args, **kwargs)
        finally:
            _BLOCK.reset(token)

    return forward


def _sub_forward(block: nn.Module, module: nn.Module, which: str):
    def forward(*args: Any, **kwargs: Any) -> Any:
        active = _BLOCK.get()
        if active is None or active[0] is not block or not args or not isinstance(args[0], Tensor):
            return type(module).forward(module, *args, **kwargs)
        rest = args[1:]
        return active[1].run(which, lambda y, **kw: type(module).forward(module, y, *rest, **kw), args[0], kwargs)

    return forward


def patch_diffusion(obj: Any, method: str | DiffusionMethod, **params: Any) -> DiffusionHandle:
    """Wrap ``obj``'s (a supported model's or a pipeline's denoiser's) blocks with ``method``; validated
    first, nothing changes on error. The handle goes on the denoiser (see :func:`tokenreduce.patch`)."""
    model = find_diffusion(obj)
    if model is None:
        raise TypeError(f"{type(obj).__name__} is not a supported diffusion model "
                        f"({', '.join(UNETS + TRANSFORMERS)}, or a pipeline with .unet / .transformer)")
    m = make_diffusion_method(method, **params)
    if (getattr(model, "_tome_info", None) or {}).get("hooks") or any(
            type(b).__name__ == "ToMeBlock" for b in model.modules()):
        raise RuntimeError("this model carries the tomesd package's patch; call tomesd.remove_patch(model) first")
    blocks = [b for b in model.modules() if _named(b, ("BasicTransformerBlock",))]
    targets = [model, *blocks, *[getattr(b, s) for b in blocks for s in SUBMODULES if getattr(b, s, None) is not None]]
    taken = [type(t).__name__ for t in targets if "forward" in vars(t)]
    if taken:
        raise RuntimeError(f"cannot patch: {taken[0]} already has an instance forward (another tool's patch?)")
    family = "unet" if _named(model, UNETS) else "transformer"
    if family not in m.families:
        raise ValueError(f"{m.name} needs a {' or '.join(m.families)} model ({', '.join(TRANSFORMERS)}); "
                         f"{type(model).__name__} is a {family}")
    span = m.span(len(blocks)) if hasattr(m, "span") else None
    patch = 1 if family == "unet" else int(model.config.patch_size)
    handle = DiffusionHandle(m, family, model, blocks)
    _install(handle, model, _model_forward(handle, model, patch))
    for i, b in enumerate(blocks):
        if span is not None:
            if span[0] <= i <= span[1]:
                _install(handle, b, _span_forward(handle, b, i, span))
            continue
        _install(handle, b, _block_forward(handle, b, i))
        for s in SUBMODULES:
            sub = getattr(b, s, None)
            if sub is not None:
                _install(handle, sub, _sub_forward(b, sub, s))
    return handle
