"""Attach a visual-token method to a VLM with forward hooks, and take them off again.

Hooks leave every module's ``forward`` and weights untouched, so removing them restores the model
exactly. ``tokenreduce.patch`` routes here when it finds a supported VLM.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from .families import VLMFamily, find_vlm
from .methods import VisualMethod, make_vlm_method
from .runner import VLMRunner
from .video.base import VideoMethod
from .video.runner import VideoRunner


@dataclass
class VLMHandle:
    """An active VLM patch: the method, the model's family adapter, and the hook handles to remove."""

    method: VisualMethod
    family: VLMFamily
    handles: list = field(default_factory=list)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()


def patch_vlm(model: nn.Module, method: str | VisualMethod, **params: Any) -> VLMHandle:
    """Register ``method``'s hooks on ``model`` (validated first; nothing changes on error)."""
    family = find_vlm(model)
    if family is None:
        raise TypeError(f"{type(model).__name__} is not a supported vision-language model")
    m = make_vlm_method(method, **params)
    runner = VideoRunner(family, m) if isinstance(m, VideoMethod) else VLMRunner(family, m)
    h = VLMHandle(m, family)
    reg = h.handles.append
    reg(family.outer.register_forward_pre_hook(runner.outer_pre, with_kwargs=True))
    reg(family.outer.register_forward_hook(runner.outer_post, with_kwargs=True, always_call=True))
    # first among the LM's pre-hooks: it maps the token-level mask (a KV press's hook then finds it mapped)
    reg(family.lm.register_forward_pre_hook(runner.lm_pre, with_kwargs=True, prepend=True))
    reg(family.lm.register_forward_hook(runner.lm_post, with_kwargs=True))
    if m.needs_cls:
        for module in family.vision_modules(m):
            reg(module.register_forward_hook(runner.vision_hook, with_kwargs=True))
        reg(family.outer.vision_tower.register_forward_hook(runner.tower_post, with_kwargs=True, always_call=True))
    if getattr(m, "before_projector", False):
        reg(family.projector.register_forward_pre_hook(runner.projector_pre, with_kwargs=True))
        reg(family.projector.register_forward_hook(runner.projector_post, with_kwargs=True))
    for i, layer in enumerate(family.layers):
        reg(layer.register_forward_pre_hook(functools.partial(runner.layer_pre, i), with_kwargs=True))
    for s in runner.attn_layers():
        reg(family.layers[s].self_attn.register_forward_pre_hook(runner.attn_pre, with_kwargs=True))
    return h
