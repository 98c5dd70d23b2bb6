"""``visualize``: which patches a token-reduction method merged or pruned, stage by stage.

Runs one image through the patched model while recording the source map after every reducing
layer (``adapters.runner.record_sources``), then paints the patch groups of a few stages next to
the original image (see ``render.paint_groups``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import nn

from ..encoder.adapters.patching import patch_info, patched
from ..encoder.adapters.runner import SourceRecord, record_sources
from ..encoder.methods import make_method
from ..encoder.methods.pruning import ScorePruner
from .render import figure, paint_groups
from .spec import VisionSpec, vision_spec


def load_image(image: Any, size: int) -> np.ndarray:
    """PIL image, path or (H, W, 3) uint8 array -> RGB float array (size, size, 3) in [0, 1]."""
    from PIL import Image

    if isinstance(image, (str, Path)):
        if not Path(image).is_file():
            raise FileNotFoundError(f"image not found: {image}")
        image = Image.open(image)
    elif isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    if not isinstance(image, Image.Image):
        raise TypeError(f"image must be a PIL image, a path or an RGB uint8 array, got {type(image).__name__}")
    w, h = image.size  # center crop to a square, then resize
    side = min(w, h)
    box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side)
    image = image.convert("RGB").crop(box).resize((size, size), Image.Resampling.BICUBIC)
    return np.asarray(image, dtype=np.float32) / 255.0


def model_input(rgb: np.ndarray, channels: int) -> np.ndarray:
    """The RGB picture (H, W, 3) as the model's input channels: itself, or its luminance (ITU-R 601,
    as PIL's "L" mode) for a one-channel model."""
    if channels == 3:
        return rgb
    if channels == 1:
        return (rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32))[..., None]
    raise ValueError(f"visualize supports 1- or 3-channel image models, got {channels} channels")


def _forward(model: nn.Module, spec: VisionSpec, pixels: torch.Tensor) -> None:
    if spec.kind == "timm":
        owner = next(m for m in model.modules() if hasattr(m, "patch_embed") and hasattr(m, "blocks"))
        owner.forward_features(pixels)
        return
    cfg = getattr(model.config, "vision_config", None) or model.config
    kwargs = {"interpolate_pos_encoding": True} if spec.image_size != cfg.image_size else {}
    if hasattr(model, "get_image_features"):
        model.get_image_features(pixel_values=pixels, **kwargs)
    else:
        model(pixel_values=pixels, **kwargs)


def stage_groups(rec: SourceRecord, spec: VisionSpec, fused_is_pruned: bool) -> np.ndarray:
    """(gh, gw) group id per patch after one layer; -1 = pruned (or fused, for score pruners)."""
    g = spec.image_size // spec.patch_size
    src = rec.src[0, spec.prefix : spec.prefix + g * g].clone()
    if fused_is_pruned:  # a pruner never merges: a slot shared by several patches is the fused token
        counts = torch.bincount(src[src >= 0], minlength=int(rec.src.max()) + 1)
        src = torch.where((src >= 0) & (counts[src.clamp(min=0)] > 1), -1, src)
    return src.view(g, g).numpy()


def _live_slots(rec: SourceRecord, spec: VisionSpec) -> int:
    g = spec.image_size // spec.patch_size
    src = rec.src[0, spec.prefix : spec.prefix + g * g]
    return int(src[src >= 0].unique().numel())


def pick_stages(records: list[SourceRecord], stages: int) -> list[SourceRecord]:
    """``stages`` records evenly spread over the reducing layers, always ending with the last one."""
    if not records or stages <= 0:
        return records[-1:]
    idx = np.linspace(0, len(records) - 1, min(stages, len(records)) + 1)[1:].round().astype(int)
    return [records[i] for i in sorted(set(idx.tolist()))]


class Stage(NamedTuple):
    layer: int  # 0-based index of the block whose reduction produced this map
    groups: np.ndarray  # (gh, gw) group per patch, -1 = pruned (dropped, or fused by a pruner)
    tokens: int  # patch tokens the model still carries (merged groups, kept patches, fused tokens)

    @property
    def pruned(self) -> int:
        return int((self.groups < 0).sum())


class Trace(NamedTuple):
    rgb: np.ndarray  # (S, S, 3) the cropped, resized input in [0, 1]
    spec: VisionSpec
    stages: list[Stage]
    label: str  # model class and method


def trace(
    model: nn.Module,
    image: Any,
    method: str | None = "tome",
    *,
    stages: int = 3,
    image_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    **params: Any,
) -> Trace:
    """Run ``image`` through ``model`` reduced by ``method`` and return the patch groups of
    ``stages`` reducing layers (evenly spread, ending with the last). ``method=None`` uses the
    model's existing patch."""
    spec = vision_spec(model, image_size, mean, std)
    if method is None and patch_info(model) is None:
        raise ValueError("method=None needs a patched model; give a method name such as 'tome'")
    m = make_method(method, **params) if method is not None else patch_info(model).method
    rgb = load_image(image, spec.image_size)
    pixels = torch.from_numpy((model_input(rgb, spec.channels) - np.array(spec.mean)) / np.array(spec.std))
    pixels = pixels.permute(2, 0, 1)[None].float()
    with torch.inference_mode(), record_sources() as records:
        if method is None:
            _forward(model, spec, pixels)
        else:
            with patched(model, m):
                _forward(model, spec, pixels)
    pruner = isinstance(m, ScorePruner)
    picked = [Stage(r.layer, stage_groups(r, spec, pruner), _live_slots(r, spec)) for r in pick_stages(records, stages)]
    label = f"{type(model).__name__} · {m.name} {_fmt(params)}".strip()
    return Trace(rgb, spec, picked, label)


def render(t: Trace, out: str | Path | None = None, title: str | None = None):
    """Draw a trace: the input, then one panel per stage. Returns the path written or a PIL image."""
    g = t.spec.image_size // t.spec.patch_size
    panels, titles = [t.rgb], [f"input: {g * g} patches ({g}x{g} of {t.spec.patch_size}px)"]
    for st in t.stages:
        what = f"{st.tokens} tokens" + (f", {st.pruned} patches pruned" if st.pruned else "")
        panels.append(paint_groups(t.rgb, st.groups, t.spec.patch_size))
        titles.append(f"after layer {st.layer + 1}: {what}")
    if not t.stages:
        titles[0] += " (nothing reduced)"
    path = Path(out) if out is not None else None
    image = figure(panels, titles, title or t.label, path)
    return path if path is not None else image


def visualize(
    model: nn.Module,
    image: Any,
    method: str | None = "tome",
    *,
    out: str | Path | None = None,
    stages: int = 3,
    image_size: int | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
    title: str | None = None,
    **params: Any,
):
    """A PNG of the patches ``method`` merged (groups in their mean colour, white borders) or pruned
    (greyed out) after ``stages`` reducing layers, next to the original image.

    ``image``: PIL image, path or RGB array; it is center-cropped and resized to the model's input
    size (or ``image_size``) and normalized with ``mean``/``std`` (default: the model's usual
    statistics). ``method=None`` uses the model's existing patch. Returns the path written (if
    ``out``) or a PIL image. Score pruners (EViT, top-k, random) fuse or drop tokens: both are
    shown as pruned.
    """
    t = trace(model, image, method, stages=stages, image_size=image_size, mean=mean, std=std, **params)
    return render(t, out, title)


def _fmt(params: dict) -> str:
    return " ".join(f"{k}={v}" for k, v in params.items())
