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
from . import runner
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
    from .timm_eva import TimmEva
    from .timm_vit import TimmViT

    return fams + [TimmViT(), TimmEva()]


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


PIN_FAMILIES = ("hf-bert", "hf-distilbert", "hf-albert")  # absolute positions: pinned tokens may move


def patch(
    model: nn.Module, method: str | Method, *, restore_length: bool = True, pin: str | None = None, **params: Any
) -> nn.Module:
    """Apply a token-reduction ``method`` (a registered name or a Method) to ``model`` in place.

    ``restore_length=True`` returns hidden states at the original sequence length: each token
    carries the final state of the group it was merged into (a pruned token, its state when
    pruned), so mean pooling over the usual attention mask equals size-weighted pooling over
    groups. Returns the model. Raises before changing anything if the model is already patched,
    unsupported, or the parameters are invalid.

    ``pin="first_segment"`` (cross-encoder rerankers): each row's first segment — the query of a
    ``[CLS] query [SEP] passage [SEP]`` pair — is never reduced, only the passage is; the segment is read
    per call from ``token_type_ids`` (rows that have a second segment) or up to the first separator
    (``config.sep_token_id``, else ``eos_token_id``: RoBERTa / XLM-R rerankers). BERT-family, DistilBERT
    and ALBERT (absolute positions); budgets count each row's unpinned tokens.

    Encoders only: :func:`tokenreduce.patch` also takes vision-language models.
    """
    if getattr(model, _ATTR, None) is not None:
        raise RuntimeError("model is already patched; call tokenreduce.unpatch(model) first")
    m = make_method(method, **params)
    fam, layers = resolve_family(model)
    m.budget().check(len(layers))
    hooks = _pin_hooks(model, fam, pin) if pin is not None else []
    protected = fam.default_protected(model) if m.protected is None else m.protected
    if m.needs & {"cls_attn", "cls_attn_heads"} and protected < 1:
        raise ValueError(f"{m.name} scores tokens by [CLS] attention, but this model has no protected [CLS] token")
    handle = PatchHandle(family=fam, method=m, layers=layers, protected=protected, restore_length=restore_length)
    handle.hooks.extend(removable for h in hooks for removable in h.register())
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
    for hook in handle.hooks:
        hook.remove()
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


class _PinHook:
    """Pre/post forward hooks on the outermost Hugging Face model: the call's first-segment mask, set for
    the blocks (a ContextVar, so threads do not share it) and cleared when the forward ends."""

    def __init__(self, owner: nn.Module, sep: int | None) -> None:
        self.owner, self.sep = owner, sep

    def register(self) -> list[Any]:
        """The two hooks' removable handles (kept on the patch handle; ``unpatch`` removes them)."""
        return [
            self.owner.register_forward_pre_hook(self._enter, with_kwargs=True),
            self.owner.register_forward_hook(self._leave, always_call=True),
        ]

    def _enter(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        runner._PINNED.set(first_segment(ids, kwargs.get("token_type_ids"), self.sep))

    def _leave(self, module: nn.Module, args: tuple, output: Any) -> None:
        runner._PINNED.set(None)


def first_segment(ids: Any, types: Any, sep: int | None) -> Any:
    """(B, N) mask of each row's first segment: ``token_type_ids == 0`` in rows with a second segment,
    else every token up to and including the first ``sep``. A row with neither is all first segment
    (nothing to reduce)."""
    import torch

    if ids is None:
        raise ValueError("pin='first_segment' needs input_ids (or token_type_ids) in the model call")
    by_sep = torch.ones_like(ids, dtype=torch.bool)
    if sep is not None:
        hit = ids == sep
        first = torch.where(hit.any(1), hit.int().argmax(1), ids.shape[1] - 1)
        by_sep = torch.arange(ids.shape[1], device=ids.device) <= first[:, None]
    if types is None:
        return by_sep
    paired = (types != 0).any(1, keepdim=True)
    return torch.where(paired, types == 0, by_sep)


def _pin_hooks(model: nn.Module, fam: Family, pin: str) -> list[_PinHook]:
    """Validate ``pin`` for this model (before anything changes) and build its hook."""
    from transformers import PreTrainedModel

    if pin != "first_segment":
        raise ValueError(f"pin must be None or 'first_segment' (a cross-encoder's query), got {pin!r}")
    if fam.name not in PIN_FAMILIES:
        raise ValueError(
            f"pin='first_segment' moves the pinned tokens to the front before block 0, which needs absolute "
            f"positions; {fam.name} is not supported (supported: {', '.join(PIN_FAMILIES)})"
        )
    owner = next((m for m in model.modules() if isinstance(m, PreTrainedModel)), None)
    if owner is None:
        raise TypeError(f"pin='first_segment' needs a Hugging Face model inside {type(model).__name__}")
    cfg = owner.config
    sep = getattr(cfg, "sep_token_id", None)
    sep = getattr(cfg, "eos_token_id", None) if sep is None else sep
    if sep is None and getattr(cfg, "type_vocab_size", 0) < 2:
        raise ValueError(
            f"pin='first_segment': {type(owner).__name__} has neither token_type_ids nor a separator id in its "
            "config (sep_token_id / eos_token_id); set one on the config"
        )
    return [_PinHook(owner, sep if isinstance(sep, int) else None)]
