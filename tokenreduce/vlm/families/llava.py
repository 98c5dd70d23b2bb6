"""LLaVA-1.5 (``LlavaForConditionalGeneration``): a CLIP tower, fixed (S/p)^2 token grids, 1-D positions.

The [CLS] row of the feature layer is rebuilt from that block's own q/k projections
(:func:`~tokenreduce.core.attention.cls_row`), so the tower keeps its SDPA kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ...core.attention import cls_row
from .base import VLMFamily, image_features


class Llava(VLMFamily):
    name = "llava"
    model_classes = frozenset({"LlavaModel"})

    def __init__(self, outer: nn.Module):
        super().__init__(outer)
        cfg = outer.config
        layer = cfg.vision_feature_layer
        self.strip_cls = cfg.vision_feature_select_strategy == "default"
        if isinstance(layer, int):  # a list of layers has no single [CLS] row
            tower = outer.vision_tower
            blocks = getattr(tower, "vision_model", tower).encoder.layers
            self.cls_block = blocks[layer % (len(blocks) + 1) - 1]  # hidden_states[i] is block i-1's output

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

    def cls_attention(self, hidden: Tensor) -> Tensor:
        attn = self.cls_module
        b, n, _ = hidden.shape
        h = attn.num_heads
        q = attn.q_proj(hidden[:, :1]).view(b, 1, h, -1).transpose(1, 2)
        k = attn.k_proj(hidden).view(b, n, h, -1).transpose(1, 2)
        row = cls_row(q, k, attn.scale)
        return row[:, 1:] if self.strip_cls else row

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
