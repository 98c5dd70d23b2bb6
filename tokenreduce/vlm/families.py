"""Where a vision-language model keeps its parts, and where each image's tokens sit in the sequence.

Supported: Hugging Face LLaVA-1.5 (``LlavaForConditionalGeneration``), LLaVA-NeXT (``LlavaNext...``)
and Qwen2-VL / Qwen2.5-VL. Each adapter is a few lookups; the hooks in ``runner.py`` do the rest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from .next_layout import image_layouts

LLAVA = {"LlavaModel", "LlavaNextModel"}
QWEN = {"Qwen2VLModel", "Qwen2_5_VLModel"}


@dataclass(frozen=True)
class Image:
    """One image's run of placeholder tokens in a row: start column, token count, and token grid (rows, cols).

    LLaVA-NeXT runs are not one grid: ``layout`` (a ``next.NextLayout``) says which crop each token is from."""

    start: int
    n: int
    grid: tuple[int, int]
    layout: Any = field(default=None, compare=False, repr=False)


@dataclass
class VLMParts:
    kind: str  # "llava" | "llava-next" | "qwen2-vl"
    outer: nn.Module  # the multimodal model whose forward sees input_ids and pixels
    lm: nn.Module  # the decoder stack (has .layers)
    image_token_id: int
    cls_block: nn.Module | None  # vision block whose attention's [CLS] row FasterVLM/VisionZip read (LLaVA only)
    cls_index: int  # that block's index: hidden_states[cls_index] is its input
    strip_cls: bool  # the feature layer drops [CLS] (LLaVA's "default" strategy)

    @property
    def cls_module(self) -> nn.Module | None:
        return None if self.cls_block is None else self.cls_block.self_attn

    @property
    def layers(self) -> nn.ModuleList:
        return self.lm.layers


def find_vlm(model: nn.Module) -> VLMParts | None:
    """The parts of a supported VLM, or None when ``model`` is not one."""
    outer = next((m for m in model.modules() if type(m).__name__ in LLAVA | QWEN), None)
    if outer is None:
        return None
    name, cfg = type(outer).__name__, outer.config
    if name in QWEN:
        return VLMParts("qwen2-vl", outer, outer.language_model, cfg.image_token_id, None, -1, False)
    layer, strategy = cfg.vision_feature_layer, cfg.vision_feature_select_strategy
    block, index = None, -1
    if isinstance(layer, int):
        tower = outer.vision_tower
        blocks = getattr(tower, "vision_model", tower).encoder.layers
        index = layer % (len(blocks) + 1) - 1  # hidden_states[i] is block i-1's output
        block = blocks[index]
    kind = "llava-next" if name == "LlavaNextModel" else "llava"
    return VLMParts(kind, outer, outer.language_model, cfg.image_token_id, block, index, strategy == "default")


def runs(flags: list[bool]) -> list[tuple[int, int]]:
    """[start, end) of every maximal run of True."""
    out, i = [], 0
    while i < len(flags):
        if flags[i]:
            j = i
            while j < len(flags) and flags[j]:
                j += 1
            out.append((i, j))
            i = j
        else:
            i += 1
    return out


def images_in_row(parts: VLMParts, ids: Tensor, grids: list[tuple[int, int]]) -> list[Image]:
    """Split the row's placeholder runs into images, using each image's grid (consumed in order)."""
    out: list[Image] = []
    for i, j in runs((ids == parts.image_token_id).tolist()):
        while i < j:  # consecutive images may share one run
            if len(out) >= len(grids):
                raise ValueError("more image placeholder tokens than image features")
            grid = grids[len(out)]
            n = grid[0] * grid[1]
            if i + n > j:
                raise ValueError(f"an image run of {j - i} tokens does not match its {grid[0]}x{grid[1]} grid")
            out.append(Image(i, n, grid))
            i += n
    return out


def image_features(inputs: dict):
    """The precomputed image encoder outputs ``generate`` passes instead of pixels, if any."""
    return (inputs.get("mm_encoder_outputs") or {}).get("image")


def has_images(inputs: dict) -> bool:
    return inputs.get("pixel_values") is not None or image_features(inputs) is not None


def image_grids(parts: VLMParts, inputs: dict) -> list[tuple[int, int]]:
    """Token grid (rows, cols) of every image in the batch, in placeholder order."""
    feats = image_features(inputs)
    if parts.kind == "qwen2-vl":
        thw = inputs.get("image_grid_thw")
        if thw is not None:
            m = parts.outer.config.vision_config.spatial_merge_size
            return [(int(t) * int(h) // m, int(w) // m) for t, h, w in thw.tolist()]
        return _grids_from_mrope(parts, inputs)
    n_images = inputs["pixel_values"].shape[0] if feats is None else len(feats.pooler_output)
    if parts.kind == "llava-next":
        return [lay.grid for lay in image_layouts(parts, inputs)]
    vc = parts.outer.config.vision_config
    g = vc.image_size // vc.patch_size
    if not parts.strip_cls:
        raise ValueError("vision_feature_select_strategy='full' keeps [CLS] as a visual token; not supported")
    return [(g, g)] * n_images


def _grids_from_mrope(parts: VLMParts, inputs: dict) -> list[tuple[int, int]]:
    """Qwen2-VL under ``generate`` gets no grid, only 3-D positions: each image's rows/cols are its h/w ranges."""
    pos, ids = inputs.get("position_ids"), inputs["input_ids"]
    if pos is None or pos.ndim != 3:
        raise ValueError("Qwen2-VL: pass image_grid_thw (or M-RoPE position_ids) with the image features")
    pos = pos[-3:]  # (t, h, w) rows; a leading text row may precede them
    grids = []
    for r in range(ids.shape[0]):
        for i, j in runs((ids[r] == parts.image_token_id).tolist()):
            span = pos[:, r, i:j]
            t, h, w = (int(span[a].max() - span[a].min()) + 1 for a in range(3))
            grids.append((t * h, w))
    return grids


def cls_attention(attn: nn.Module, hidden: Tensor) -> Tensor:
    """Head-averaged attention row of the first ([CLS]) token over all tokens, (B, N), from q/k projections."""
    b, n, _ = hidden.shape
    h = attn.num_heads
    q = attn.q_proj(hidden[:, :1]).view(b, 1, h, -1).transpose(1, 2)
    k = attn.k_proj(hidden).view(b, n, h, -1).transpose(1, 2)
    logits = (q @ k.transpose(-1, -2)).squeeze(2) * attn.scale
    return torch.softmax(logits.float(), dim=-1).mean(dim=1)
