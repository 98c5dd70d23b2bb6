"""``patch`` / ``unpatch`` / ``patched``: attach a method to a model's blocks and take it off again.

Patching replaces each block's ``forward`` by an instance attribute; the class and every weight
are untouched, so ``unpatch`` restores the model bit for bit. All parameters are validated
before anything is changed.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

from ..methods import make_method
from ..methods.base import Method
from .base import Family
from .hf_albert import HFAlbert
from .hf_beit import HFBeit, HFData2VecVision
from .hf_bert import HFBert
from .hf_deberta_v2 import HFDebertaV2
from .hf_dinov2 import HFDinov2
from .hf_distilbert import HFDistilBert
from .hf_modernbert import HFModernBert
from .hf_mpnet import HFMPNet
from .hf_siglip import HFSiglipVision
from .hf_vit import HFCLIPVision, HFViT
from .runner import PatchHandle, reduced_forward

PATCH_ATTR = "_tokenreduce_patch"  # the one attribute a patch (of any family) sets on a model
_ATTR = PATCH_ATTR


def families() -> list[Family]:
    """Supported model families, most specific first (timm only when the extra is installed)."""
    fams: list[Family] = [HFBert(), HFDistilBert(), HFAlbert(), HFMPNet(), HFDebertaV2(), HFModernBert()]
    fams += [HFViT(), HFCLIPVision(), HFDinov2(), HFSiglipVision(), HFBeit(), HFData2VecVision()]
    if importlib.util.find_spec("timm") is None:
        return fams
    from .timm_vit import TimmViT

    return fams + [TimmViT()]


def resolve_family(model: nn.Module) -> tuple[Family, nn.ModuleList]:
    for fam in families():
        layers = fam.find_layers(model)
        if layers is not None:
            return fam, layers
    names = ", ".join(f.name for f in families())
    raise TypeError(
        f"unsupported model {type(model).__name__}: no transformer blocks of a supported family "
        f"found (supported: {names})"
    )


def patch(model: nn.Module, method: str | Method, *, restore_length: bool = True, **params: Any) -> nn.Module:
    """Apply a token-reduction ``method`` (a registered name or a Method) to ``model`` in place.

    ``restore_length=True`` returns hidden states at the original sequence length: each token
    carries the final state of the group it was merged into (a pruned token, its state when
    pruned), so mean pooling over the usual attention mask equals size-weighted pooling over
    groups. Returns the model. Raises before changing anything if the model is already patched,
    unsupported, or the parameters are invalid.

    Encoders only: :func:`tokenreduce.patch` also takes vision-language models.
    """
    if getattr(model, _ATTR, None) is not None:
        raise RuntimeError("model is already patched; call tokenreduce.unpatch(model) first")
    m = make_method(method, **params)
    fam, layers = resolve_family(model)
    m.budget().check(len(layers))
    protected = fam.default_protected(model) if m.protected is None else m.protected
    if m.needs & {"cls_attn", "cls_attn_heads"} and protected < 1:
        raise ValueError(f"{m.name} scores tokens by [CLS] attention, but this model has no protected [CLS] token")
    handle = PatchHandle(family=fam, method=m, layers=layers, protected=protected, restore_length=restore_length)
    for i, layer in enumerate(layers):
        handle.saved_forwards.append(layer.__dict__.get("forward"))
        layer.forward = functools.partial(_bound_forward, handle, i, layer)
    object.__setattr__(model, _ATTR, handle)
    return model


def _bound_forward(handle: PatchHandle, index: int, layer: nn.Module, *args: Any, **kwargs: Any):
    return reduced_forward(handle, index, layer, *args, **kwargs)


def unpatch(model: nn.Module) -> nn.Module:
    """Remove a patch; the model's modules are restored exactly. A no-op on an unpatched model."""
    handle: PatchHandle | None = getattr(model, _ATTR, None)
    if handle is None:
        return model
    if not isinstance(handle, PatchHandle):
        raise TypeError(f"this model carries a {type(handle).__name__}, not an encoder patch: use tokenreduce.unpatch")
    for layer, saved in zip(handle.layers, handle.saved_forwards):
        if saved is None:
            del layer.forward
        else:
            layer.forward = saved
    object.__delattr__(model, _ATTR)
    return model


def patch_info(model: nn.Module) -> PatchHandle | None:
    """The active patch of a model (family, method, protected count), or None."""
    return getattr(model, _ATTR, None)


@contextmanager
def patched(model: nn.Module, method: str | Method, **params: Any) -> Iterator[nn.Module]:
    """Context manager: ``with tokenreduce.patched(model, "tome", r=8): model(...)``."""
    patch(model, method, **params)
    try:
        yield model
    finally:
        unpatch(model)
