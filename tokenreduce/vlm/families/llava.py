"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a CLIP tower, fixed (S/p)^2 token grids, 1-D positions.

The [CLS] row of the feature layer is rebuilt from that block's own q/k projections
(:func:`~tokenreduce.core.attention.cls_row`), so the tower keeps its SDPA kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...core.attention import cls_row, query_rows
from .base import VLMFamily, image_features


class Llava(VLMFamily):
    name = "llava"
    model_classes = frozenset({"LlavaModel"})

    def __init__(self, outer: nn.Module):
        super().__init__(outer)
        cfg = outer.config
        layer = cfg.vision_feature_layer
        self.strip_cls = cfg.vision_feature_select_strategy == "default"
        tower = outer.vision_tower
        self.blocks = getattr(tower, "vision_model", tower).encoder.layers
        self.feature_block = None
        if isinstance(layer, int):  # a list of layers has no single [CLS] row
            self.feature_block = layer % (len(self.blocks) + 1) - 1  # hidden_states[i] is block i-1's output
            self.cls_block = self.blocks[self.feature_block]

    @property
    def projector(self):
        return self.outer.multi_modal_projector

    def feature_grid(self) -> tuple[int, int]:
        vc = self.outer.config.vision_config
        return vc.image_size // vc.patch_size, vc.image_size // vc.patch_size

    def vision_modules(self, method):
        """Blocks at ``method.vision_offsets()`` from the feature block (which must exist: 0 <= index)."""
        offsets = tuple(method.vision_offsets(self.feature_block))
        bad = [o for o in offsets if not 0 <= self.feature_block + o < len(self.blocks)]
        if bad:
            raise ValueError(f"{method.name}: vision layer offsets {bad} fall outside the tower's blocks "
                             f"[{-self.feature_block}, 0] from the feature layer (block {self.feature_block})")
        return [self.blocks[self.feature_block + o].self_attn for o in offsets]

    def check_features(self) -> None:
        """The feature layer must drop [CLS]: with ``'full'`` it would be a visual token too."""
        if not self.strip_cls:
            raise ValueError("vision_feature_select_strategy='full' keeps [CLS] as a visual token; not supported")

    def image_grids(self, inputs):
        feats = image_features(inputs)
        n_images = inputs["pixel_values"].shape[0] if feats is None else len(feats.pooler_output)
        vc = self.outer.config.vision_config
        g = vc.image_size // vc.patch_size
        self.check_features()
        return [(g, g)] * n_images

    def cls_attention(self, hidden: Tensor, attn: nn.Module | None = None) -> Tensor:
        attn = self.cls_module if attn is None else attn
        b, n, _ = hidden.shape
        h = attn.num_heads
        q = attn.q_proj(hidden[:, :1]).view(b, 1, h, -1).transpose(1, 2)
        k = attn.k_proj(hidden).view(b, n, h, -1).transpose(1, 2)
        row = cls_row(q, k, attn.scale)
        return row[:, 1:] if self.strip_cls else row

    def received_attention(self, hidden: Tensor, attn: nn.Module) -> Tensor:
        """Attention each patch receives (B, patches): the full head-averaged N x N map of ``attn``, summed
        over all queries ([CLS] included), rebuilt from its q/k projections (so the tower keeps SDPA)."""
        b, n, _ = hidden.shape
        h = attn.num_heads
        q = attn.q_proj(hidden).view(b, n, h, -1).transpose(1, 2)
        k = attn.k_proj(hidden).view(b, n, h, -1).transpose(1, 2)
        got = query_rows(q, k, attn.scale).mean(1).sum(1)
        return got[:, 1:] if self.strip_cls else got

    def cls_for_features(self, cls, feats):
        """One [CLS] row per placeholder image. Beam search repeats each row's images (``[A, B] -> [A, B, A,
        B]``) but not the tower's output; repeated images are the same (or equal) feature tensors, so each maps
        to its first occurrence, whose order is the tower's."""
        feats = feats.pooler_output
        if cls.shape[0] == len(feats):
            return cls
        firsts: list[Tensor] = []
        index = []
        for f in feats:
            u = next((i for i, g in enumerate(firsts) if g is f or (g.shape == f.shape and torch.equal(g, f))), None)
            if u is None:
                firsts.append(f)
                u = len(firsts) - 1
            index.append(u)
        if len(firsts) != cls.shape[0]:
            raise ValueError(f"{len(feats)} image features but {cls.shape[0]} [CLS] rows; cannot match them")
        return cls[torch.tensor(index, device=cls.device)]
