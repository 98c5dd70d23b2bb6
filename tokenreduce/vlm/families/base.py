"""The adapter protocol: what the hooks in ``runner.py`` need to know about one VLM family.

A family finds its parts (outer multimodal model, decoder stack, vision block whose [CLS] row is read),
says where each image's tokens sit (placeholder runs, token grids, LLaVA-NeXT's crop layouts), which
pieces of an image are reduced on their own and which groups inside-LLM methods rank within, gives
decode-time positions where the model would get them wrong (Qwen2-VL's 3-D M-RoPE), and computes the
[CLS] attention row. Everything generic (budgets, masks, caches, positions of kept tokens) is the runner's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..methods import VisualMethod


@dataclass(frozen=True)
class Image:
    """One image's run of placeholder tokens in a row: start column, token count, and token grid (rows, cols).

    ``index`` is its place among all images of the forward; LLaVA-NeXT runs are not one grid, and ``layout``
    (a ``llava_next.NextLayout``) says which crop each token is from."""

    start: int
    n: int
    grid: tuple[int, int]
    index: int = 0
    layout: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class Video:
    """One video's run of placeholder tokens in a row: start column, frames (temporal token groups) and the
    (rows, cols) token grid of each frame; its tokens are frame-major, then row-major (Qwen2-VL's order)."""

    start: int
    frames: int
    grid: tuple[int, int]
    index: int = 0

    @property
    def n(self) -> int:
        return self.frames * self.grid[0] * self.grid[1]


@dataclass(frozen=True)
class Piece:
    """Part of an image run reduced on its own: run positions (ascending), token grid, [CLS] scores, budget.
    A budget of at least its size keeps it whole; 0 drops it."""

    pos: Tensor
    grid: tuple[int, int]
    cls: Tensor | None
    k: int


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


def image_features(inputs: dict):
    """The precomputed image encoder outputs ``generate`` passes instead of pixels, if any."""
    return (inputs.get("mm_encoder_outputs") or {}).get("image")


def has_images(inputs: dict) -> bool:
    return inputs.get("pixel_values") is not None or image_features(inputs) is not None


def has_videos(inputs: dict) -> bool:
    """Video pixels, or the video encoder outputs ``generate`` passes instead."""
    encoded = (inputs.get("mm_encoder_outputs") or {}).get("video")
    return inputs.get("pixel_values_videos") is not None or encoded is not None


class VLMFamily:
    """A supported VLM, bound to one model. Subclasses set ``name`` and ``model_classes`` and override the
    hooks their architecture needs; the defaults describe a family of fixed-grid images and no [CLS]."""

    name: ClassVar[str] = ""
    model_classes: ClassVar[frozenset[str]] = frozenset()  # class names of the outer multimodal model

    def __init__(self, outer: nn.Module):
        self.outer = outer  # the multimodal model whose forward sees input_ids and pixels
        self.lm: nn.Module = outer.language_model  # the decoder stack (has .layers)
        self.image_token_id: int = outer.config.image_token_id
        self.video_token_id: int | None = None  # set by families that take videos
        self.cls_block: nn.Module | None = None  # vision block whose attention's [CLS] row is read
        self.strip_cls = False  # the feature layer drops [CLS]

    @property
    def layers(self) -> nn.ModuleList:
        return self.lm.layers

    @property
    def cls_module(self) -> nn.Module | None:
        """The attention module whose forward hook records the [CLS] row (None: no [CLS])."""
        return None if self.cls_block is None else self.cls_block.self_attn

    # ---- checks ------------------------------------------------------------------------------------
    def check(self, method: VisualMethod) -> None:
        """Reject a method this family cannot run, before any compute."""
        if method.thumbnail_guided and not self.guides(method):
            raise ValueError(
                f"{method.name}: thumbnail_guidance needs a LLaVA-NeXT model and a [CLS]-attention method "
                "applied before the LLM (fastervlm, visionzip)"
            )
        if method.needs_cls and self.cls_module is None:
            raise ValueError(f"{method.name} ranks tokens by the vision tower's [CLS] attention; {self.name}: no [CLS]")
        if method.needs_cls:
            self.vision_modules(method)  # the blocks it reads exist
        if getattr(method, "before_projector", False) and self.projector is None:
            raise ValueError(f"{method.name} pools patch features before the projector: LLaVA-1.5 models only, "
                             f"not {self.name}")

    @property
    def projector(self) -> nn.Module | None:
        """The projector whose input is one image's (patches, C) grid of features, when pooling before it is
        supported (LLaVA-1.5; None elsewhere)."""
        return None

    def feature_grid(self) -> tuple[int, int]:
        """The patch grid of the projector's input (families with a :attr:`projector`)."""
        raise NotImplementedError  # pragma: no cover

    def vision_modules(self, method: VisualMethod) -> list[nn.Module]:
        """The vision attention modules whose rows ``method`` reads (its ``vision_offsets`` from the feature
        block); by default only the [CLS] block."""
        if tuple(method.vision_offsets(0)) != (0,):
            raise ValueError(f"{method.name} reads several vision layers; {self.name} supports only the feature layer")
        return [self.cls_module]

    def guides(self, method: VisualMethod) -> bool:
        """Can crop budgets follow the thumbnail's [CLS] attention for ``method`` (LLaVA-NeXT only)?"""
        return False

    # ---- where the images are ----------------------------------------------------------------------
    def image_grids(self, inputs: dict) -> list[tuple[int, int]]:
        """Token grid (rows, cols) of every image in the batch, in placeholder order."""
        raise NotImplementedError  # pragma: no cover

    def images(self, ids: Tensor, inputs: dict) -> list[list[Image]]:
        """Every row's images, in order, from the placeholder runs of ``ids`` (B, N) and the image grids."""
        return split_rows(ids, self.image_token_id, self.image_grids(inputs))

    def videos(self, ids: Tensor, inputs: dict) -> list[list[Video]]:
        """Every row's videos, in order (frames and per-frame grid of each placeholder run); families that
        take videos override this and set ``video_token_id``."""
        raise ValueError(f"{self.name}: this family takes no video input")

    def pieces(self, method: VisualMethod, image: Image, cls: Tensor | None, device: torch.device) -> list[Piece]:
        """How a before-LLM method reduces ``image``: by default the whole run, with its own [CLS] row
        (``cls`` holds one row per vision-batch entry)."""
        c = None if cls is None else cls[image.index]
        return [Piece(torch.arange(image.n, device=device), image.grid, c, method.budget(image.n))]

    def groups(self, images: list[list[Image]], n: int, device: torch.device) -> tuple[Tensor, list[int]]:
        """(B, n) group of every original token for inside-LLM ranking (-1: never dropped) and each group's
        size. By default all visual tokens of a row form one group, so the budget is the row's."""
        visual = torch.full((len(images), n), -1, dtype=torch.long, device=device)
        for b, row in enumerate(images):
            for im in row:
                visual[b, im.start : im.start + im.n] = 0
        return visual, [int((visual[0] == 0).sum())]

    # ---- positions and [CLS] -----------------------------------------------------------------------
    def decode_positions(self, inputs: dict, seen: int) -> Tensor | None:
        """Position ids for a decode step over a shortened cache when the caller gives none and the model
        would derive wrong ones (None: the runner's 1-D positions are right)."""
        return None

    def cls_attention(self, hidden: Tensor, attn: nn.Module | None = None) -> Tensor:
        """[CLS] attention row (B, patches) of vision attention ``attn`` (default ``cls_module``) given its input
        ``hidden`` (B, N, C)."""
        raise NotImplementedError  # pragma: no cover

    def cls_for_features(self, cls: Tensor, feats) -> Tensor:
        """[CLS] rows recorded while ``generate`` encoded the images, lined up with the features it hands
        the prefill (one row per vision-batch entry)."""
        return cls


def split_rows(ids: Tensor, image_token_id: int, grids: list[tuple[int, int]]) -> list[list[Image]]:
    """Every row's images: placeholder runs split by the image grids, consumed in order across rows."""
    rows: list[list[Image]] = []
    count = 0
    for r in range(ids.shape[0]):
        row = images_in_row(ids[r], image_token_id, grids[count:], count)
        rows.append(row)
        count += len(row)
    if count != len(grids):
        raise ValueError(f"{len(grids)} images given but {count} placeholder runs found")
    return rows


def images_in_row(ids: Tensor, image_token_id: int, grids: list[tuple[int, int]], first: int = 0) -> list[Image]:
    """Split the row's placeholder runs into images, using each image's grid (consumed in order)."""
    out: list[Image] = []
    for i, j in runs((ids == image_token_id).tolist()):
        while i < j:  # consecutive images may share one run
            if len(out) >= len(grids):
                raise ValueError("more image placeholder tokens than image features")
            grid = grids[len(out)]
            n = grid[0] * grid[1]
            if i + n > j:
                raise ValueError(f"an image run of {j - i} tokens does not match its {grid[0]}x{grid[1]} grid")
            out.append(Image(i, n, grid, first + len(out)))
            i += n
    return out
