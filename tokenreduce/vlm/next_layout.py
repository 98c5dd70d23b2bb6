"""LLaVA-NeXT (AnyRes) layouts: where each token of an image's placeholder run came from.

An image's run is its base (thumbnail) crop's g x g tokens, then the high-resolution crops' tokens,
unpadded and packed row by row over the whole crop grid with an ``image_newline`` token ending each row
(``LlavaNextModel.pack_image_features``). ``NextLayout`` records, for every run position, the vision-batch
crop and the patch inside it, so [CLS] attention (recorded per crop) lines up with the packed tokens.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

if TYPE_CHECKING:
    from .families import Image, VLMParts

NEWLINE = -1


@dataclass(frozen=True, eq=False)
class NextLayout:
    """One image's run: ``crop[p]`` (0 = base, k >= 1 = high-res crop k, -1 = newline) and ``patch[p]`` (its
    index in that crop's g x g grid) for every position p; crop k is vision-batch entry ``offset + k``."""

    g: int
    tiles: tuple[int, int]  # high-res crop grid (rows, cols); (0, 0) when the image has only its base
    window: tuple[int, int, int, int]  # unpadded token rows [r0, r1) and cols [c0, c1) of the padded crop grid
    offset: int
    crop: Tensor
    patch: Tensor

    @property
    def n(self) -> int:
        return len(self.crop)

    @property
    def crops(self) -> int:
        return 1 + self.tiles[0] * self.tiles[1]

    @property
    def grid(self) -> tuple[int, int]:
        return (1, self.n)  # the run is not one rectangle; reduction goes crop by crop

    def crop_grid(self, k: int) -> tuple[int, int]:
        """Token grid (rows, cols) crop ``k`` keeps after unpadding (its tokens are row-major in the run)."""
        if k == 0:
            return (self.g, self.g)
        (r0, r1), (c0, c1) = self.crop_span(k)
        return (r1 - r0, c1 - c0)

    def crop_span(self, k: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """Rows and cols of high-res crop ``k`` inside the unpadded window (window coordinates)."""
        g, (a0, a1, b0, b1) = self.g, self.window
        tr, tc = divmod(k - 1, self.tiles[1])
        rows = (max(tr * g, a0) - a0, min((tr + 1) * g, a1) - a0)
        cols = (max(tc * g, b0) - b0, min((tc + 1) * g, b1) - b0)
        return (rows[0], max(rows)), (cols[0], max(cols))


def build_layout(g: int, tiles: tuple[int, int], window: tuple[int, int, int, int], offset: int) -> NextLayout:
    """The layout of a run whose high-res crops tile ``tiles`` and survive unpadding as ``window``."""
    base_c, base_p = torch.zeros(g * g, dtype=torch.long), torch.arange(g * g)
    if tiles == (0, 0):  # no high-res crops: base then one newline
        crop, patch = torch.cat([base_c, torch.tensor([NEWLINE])]), torch.cat([base_p, torch.tensor([NEWLINE])])
        return NextLayout(g, tiles, window, offset, crop, patch)
    r0, r1, c0, c1 = window
    rows, cols = torch.arange(r0, r1)[:, None], torch.arange(c0, c1)[None, :]
    c = 1 + (rows // g) * tiles[1] + cols // g
    p = (rows % g) * g + cols % g
    nl = torch.full((r1 - r0, 1), NEWLINE)
    crop = torch.cat([base_c, torch.cat([c, nl], 1).flatten()])
    patch = torch.cat([base_p, torch.cat([p, nl], 1).flatten()])
    return NextLayout(g, tiles, window, offset, crop, patch)


def _geometry(parts: VLMParts) -> tuple[int, int, list]:
    vc = parts.outer.config.vision_config
    if not parts.strip_cls:
        raise ValueError("vision_feature_select_strategy='full' keeps [CLS] as a visual token; not supported")
    return vc.image_size, vc.image_size // vc.patch_size, parts.outer.config.image_grid_pinpoints


def layouts_from_sizes(parts: VLMParts, image_sizes: Tensor) -> list[NextLayout]:
    """Layouts from ``image_sizes`` (H, W), with the model's own grid choice and unpadding."""
    s, g, pins = _geometry(parts)
    out, offset = [], 0
    for size in image_sizes.tolist():
        th, tw = get_anyres_image_grid_shape(size, pins, s)
        index = torch.arange(th * g * tw * g).view(1, th * g, tw * g)
        kept = unpad_image(index, size)
        if kept.numel():
            r0, c0 = divmod(int(kept[0, 0, 0]), tw * g)
        else:  # an extreme aspect can unpad to nothing; the cut is symmetric
            r0, c0 = (th * g - kept.shape[1]) // 2, (tw * g - kept.shape[2]) // 2
        lay = build_layout(g, (th, tw), (r0, r0 + kept.shape[1], c0, c0 + kept.shape[2]), offset)
        out.append(lay)
        offset += lay.crops
    return out


def _packed_shape(packed: Tensor, newline: Tensor, g: int) -> tuple[int, int]:
    """(rows, cols) of the unpadded grid read off the newline tokens of a packed run."""
    is_nl = (packed == newline.to(packed)).all(-1)
    is_nl, h = is_nl[g * g :], int(is_nl[g * g :].sum())
    if h == 0 or len(is_nl) % h:
        raise ValueError("LLaVA-NeXT image features without image_newline rows; cannot locate the crops")
    grid = is_nl.view(h, -1)
    if not (grid[:, -1].all() and not grid[:, :-1].any()):
        raise ValueError("LLaVA-NeXT image features: newline tokens are not at row ends")
    return h, grid.shape[1] - 1


def _candidates(h: int, w: int, s: int, g: int, pins: list, offset: int) -> list[NextLayout]:
    """Every crop grid from the pinpoints that unpads to an h x w token grid."""
    out = {(0, 0): (0, 0, 0, 0)} if (h, w) == (1, 0) else {}  # base only: one newline after it
    for ph, pw in pins:
        th, tw = ph // s, pw // s
        hf, wf = th * g, tw * g
        if w == wf and h <= hf and (hf - h) % 2 == 0:
            out[(th, tw)] = ((hf - h) // 2, (hf + h) // 2, 0, wf)
        elif h == hf and w <= wf and (wf - w) % 2 == 0:
            out[(th, tw)] = (0, hf, (wf - w) // 2, (wf + w) // 2)
    return [build_layout(g, t, win, offset) for t, win in out.items()]


def _close(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise: is ``a`` the vector ``b``? (A wrong token is unrelated; the tolerance absorbs batched-vs-subset
    rounding, bf16 included.)"""
    a, b = a.float(), b.float()
    return (a - b).norm(dim=-1) <= 0.05 * b.norm(dim=-1) + 1e-6


def _agrees(lay: NextLayout, packed: Tensor, feats: Tensor | None, project) -> bool:
    """Does the first packed token of every crop equal the projected vision feature the layout says it is?"""
    if feats is None:
        return True
    if lay.offset + lay.crops > feats.shape[0]:
        return False
    pos = [int((lay.crop == k).nonzero()[0]) for k in range(lay.crops) if (lay.crop == k).any()]
    return bool(_close(project(feats[lay.offset + lay.crop[pos], lay.patch[pos]]), packed[pos]).all())


def layouts_from_features(parts: VLMParts, inputs: dict, feats) -> list[NextLayout]:
    """Layouts when ``generate`` passes packed features but no ``image_sizes``: the newline rows give each
    unpadded grid, the pinpoints the crop grids that fit it, and the vision tower's hidden states (projected
    for a few tokens) which one it is and where the image's crops sit in the vision batch. Beam search repeats
    an image's packed features but not the tower's output; matching the base token finds the right crops."""
    s, g, pins = _geometry(parts)
    layer = inputs.get("vision_feature_layer")
    layer = parts.outer.config.vision_feature_layer if layer is None else layer
    hs, project = getattr(feats, "hidden_states", None), parts.outer.multi_modal_projector
    sel = bases = None
    if hs is not None:
        sel = (torch.cat([hs[i] for i in layer], -1) if isinstance(layer, list) else hs[layer])[:, 1:]
        bases = project(sel[:, 0])  # first patch of every vision-batch entry
    out, offset = [], 0
    for packed in feats.pooler_output:
        h, w = _packed_shape(packed, parts.outer.image_newline, g)
        if bases is not None:
            hits = _close(bases, packed[:1].expand_as(bases)).nonzero().squeeze(1).tolist()
            offset = next((i for i in hits if i >= offset), hits[0] if hits else offset)
        good = [c for c in _candidates(h, w, s, g, pins, offset) if _agrees(c, packed, sel, project)]
        if len(good) > 1 and all(torch.equal(c.crop, good[0].crop) for c in good):
            good = good[:1]  # extreme aspects: every crop unpadded away, so the tiling is invisible and moot
        if len(good) != 1:
            raise ValueError(
                f"LLaVA-NeXT: cannot tell the crop grid of a {h}x{w} packed image from its features "
                f"({len(good)} candidates); call the model with image_sizes"
            )
        out.append(good[0])
        offset += good[0].crops
    return out


def image_layouts(parts: VLMParts, inputs: dict) -> list[NextLayout]:
    """Every image's layout, in placeholder order, from ``image_sizes`` or from ``generate``'s features."""
    feats = (inputs.get("mm_encoder_outputs") or {}).get("image")
    if feats is not None:
        return layouts_from_features(parts, inputs, feats)
    if inputs.get("image_sizes") is None:
        raise ValueError("LLaVA-NeXT: pass image_sizes with pixel_values")
    return layouts_from_sizes(parts, inputs["image_sizes"])


def attach(rows: list[list[Image]], layouts: list[NextLayout]) -> list[list[Image]]:
    """The rows' images (in placeholder order) with their layouts."""
    it = iter(layouts)
    return [[replace(im, layout=next(it)) for im in images] for images in rows]
