"""LLaVA-NeXT (AnyRes, ``LlavaNextForConditionalGeneration``): LLaVA plus crop layouts and per-crop budgets.

An image's run is its base (thumbnail) crop's g x g tokens, then the high-resolution crops' tokens,
unpadded and packed row by row over the whole crop grid with an ``image_newline`` token ending each row
(``LlavaNextModel.pack_image_features``). ``NextLayout`` records, for every run position, the vision-batch
crop and the patch inside it, so [CLS] attention (recorded per crop) lines up with the packed tokens.

Budgets apply per crop: the thumbnail and each high-res crop keep the method's share of their own tokens
(``tokens=k`` means k per crop); newline tokens are never dropped. Inside-LLM methods rank within each crop.

``thumbnail_guidance`` follows GlobalCom2's crop-wise allocation (Liu et al., "Compression with Global
Guidance: Towards Training-free High-Resolution MLLMs Acceleration", arXiv 2501.05179; AAAI 2026 as "Global
Compression Commander"), simplified: the high-res crops share the same total budget in proportion to the
thumbnail's [CLS] attention mass over the part of the image each crop covers. Tokens inside a crop are
still ranked by the method's own per-crop scores (GlobalCom2 also mixes in thumbnail scores there).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from transformers.models.llava_next.modeling_llava_next import get_anyres_image_grid_shape, unpad_image

from ..methods import BeforeMethod, VisualMethod
from .base import Image, Piece, image_features, split_rows
from .llava import Llava


class LlavaNext(Llava):
    name = "llava-next"
    model_classes = frozenset({"LlavaNextModel"})

    @property
    def projector(self):
        return None  # crops are packed and unpadded after the projector: pooling before it is not supported

    def guides(self, method: VisualMethod) -> bool:
        return method.needs_cls and isinstance(method, BeforeMethod)

    def image_grids(self, inputs):
        return [lay.grid for lay in image_layouts(self, inputs)]

    def images(self, ids, inputs):
        layouts = image_layouts(self, inputs)
        return attach(split_rows(ids, self.image_token_id, [lay.grid for lay in layouts]), layouts)

    def pieces(self, method, image, cls, device):
        """The newline tokens (kept whole), then each crop with its budget and its [CLS] scores."""
        lay = image.layout
        crop, patch = lay.crop.to(device), lay.patch.to(device)
        members = [(crop == k).nonzero().squeeze(1) for k in range(lay.crops)]
        budgets = crop_budgets(method, lay, [len(m) for m in members], cls)
        newlines = (crop == NEWLINE).nonzero().squeeze(1)
        out = [Piece(newlines, (1, len(newlines)), None, len(newlines))]
        for k, (pos, b) in enumerate(zip(members, budgets)):
            c = None if cls is None else cls[lay.offset + k, patch[pos]]
            out.append(Piece(pos, lay.crop_grid(k), c, b))
        return out

    def groups(self, images, n, device):
        """One group per crop of every image (newlines and text: -1, never dropped)."""
        out, sizes = torch.full((len(images), n), -1, dtype=torch.long, device=device), []
        for b, row in enumerate(images):
            for im in row:
                crop = im.layout.crop.to(device)
                for k in range(im.layout.crops):
                    pos = (crop == k).nonzero().squeeze(1)
                    out[b, im.start + pos] = len(sizes)
                    sizes.append(len(pos))
        return out, sizes

    def cls_for_features(self, cls, feats):
        return cls  # one row per crop; the layouts already point at the right vision-batch entries


# ---- layouts ---------------------------------------------------------------------------------------------
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


def _geometry(family: LlavaNext) -> tuple[int, int, list]:
    """Crop size in pixels, tokens per crop side, and the AnyRes pinpoints."""
    family.check_features()
    vc = family.outer.config.vision_config
    return vc.image_size, vc.image_size // vc.patch_size, family.outer.config.image_grid_pinpoints


def layouts_from_sizes(family: LlavaNext, image_sizes: Tensor) -> list[NextLayout]:
    """Layouts from ``image_sizes`` (H, W), with the model's own grid choice and unpadding."""
    s, g, pins = _geometry(family)
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


def layouts_from_features(family: LlavaNext, inputs: dict, feats) -> list[NextLayout]:
    """Layouts when ``generate`` passes packed features but no ``image_sizes``: the newline rows give each
    unpadded grid, the pinpoints the crop grids that fit it, and the vision tower's hidden states (projected
    for a few tokens) which one it is and where the image's crops sit in the vision batch. Beam search repeats
    an image's packed features but not the tower's output; matching the base token finds the right crops."""
    s, g, pins = _geometry(family)
    layer = inputs.get("vision_feature_layer")
    layer = family.outer.config.vision_feature_layer if layer is None else layer
    hs, project = getattr(feats, "hidden_states", None), family.outer.multi_modal_projector
    sel = bases = None
    if hs is not None:
        sel = (torch.cat([hs[i] for i in layer], -1) if isinstance(layer, list) else hs[layer])[:, 1:]
        bases = project(sel[:, 0])  # first patch of every vision-batch entry
    out, offset = [], 0
    for packed in feats.pooler_output:
        h, w = _packed_shape(packed, family.outer.image_newline, g)
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


def image_layouts(family: LlavaNext, inputs: dict) -> list[NextLayout]:
    """Every image's layout, in placeholder order, from ``image_sizes`` or from ``generate``'s features."""
    feats = image_features(inputs)
    if feats is not None:
        return layouts_from_features(family, inputs, feats)
    if inputs.get("image_sizes") is None:
        raise ValueError("LLaVA-NeXT: pass image_sizes with pixel_values")
    return layouts_from_sizes(family, inputs["image_sizes"])


def attach(rows: list[list[Image]], layouts: list[NextLayout]) -> list[list[Image]]:
    """The rows' images (in placeholder order) with their layouts."""
    it = iter(layouts)
    return [[replace(im, layout=next(it)) for im in images] for images in rows]


# ---- per-crop budgets ------------------------------------------------------------------------------------
def allot(weights: Tensor, caps: list[int], total: int) -> list[int]:
    """Integers <= caps summing to min(total, sum(caps)), proportional to ``weights`` (largest remainders;
    capped shares are filled first and the rest is shared among the others)."""
    total = min(total, sum(caps))
    w = weights.detach().double().cpu().clamp(min=0) + 1e-12
    share = torch.zeros(len(caps), dtype=torch.float64)
    free = torch.tensor([c > 0 for c in caps])
    cap = torch.tensor(caps, dtype=torch.float64)
    left = float(total)
    while free.any():
        s = torch.where(free, left * w / w[free].sum(), 0.0)
        over = free & (s >= cap)
        if not over.any():
            share = torch.where(free, s, share)
            break
        share = torch.where(over, cap, share)
        left -= float(cap[over].sum())
        free &= ~over
    out = share.floor().long()
    rest = total - int(out.sum())
    order = torch.sort(torch.where(out < cap.long(), share - out, -1.0), descending=True, stable=True).indices
    out[order[:rest]] += 1
    return out.tolist()


def thumbnail_mass(lay: NextLayout, thumb: Tensor) -> Tensor:
    """[CLS] attention mass of the thumbnail (g*g,) over the image region each high-res crop covers.

    The thumbnail is the whole image resized to the crop size, and the unpadded window is the whole image
    too, so a crop's window span maps linearly onto thumbnail cells; cells count by overlapped area."""
    g = lay.g
    t = thumb.double().view(g, g)
    h, w = lay.window[1] - lay.window[0], lay.window[3] - lay.window[2]
    if h == 0 or w == 0:  # an extreme aspect unpadded every crop away
        return torch.zeros(lay.crops - 1, dtype=t.dtype, device=t.device)
    edges = torch.arange(g + 1, dtype=torch.float64, device=t.device) / g

    def overlap(a: float, b: float) -> Tensor:  # (g,) fraction of each thumbnail cell inside [a, b)
        return ((edges[1:].clamp(max=b) - edges[:-1].clamp(min=a)).clamp(min=0) * g).to(t)

    out = []
    for k in range(1, lay.crops):
        (r0, r1), (c0, c1) = lay.crop_span(k)
        out.append(overlap(r0 / h, r1 / h) @ t @ overlap(c0 / w, c1 / w))
    return torch.stack(out)


def crop_budgets(method: VisualMethod, lay: NextLayout, sizes: list[int], cls: Tensor | None) -> list[int]:
    """Tokens each crop keeps: the method's budget of each crop's own count, or with thumbnail guidance
    the same high-res total shared by the thumbnail's attention mass."""
    budgets = [method.budget(n) if n else 0 for n in sizes]
    if method.thumbnail_guided and lay.crops > 1:
        mass = thumbnail_mass(lay, cls[lay.offset])
        budgets[1:] = allot(mass, sizes[1:], sum(budgets[1:]))
    return budgets
