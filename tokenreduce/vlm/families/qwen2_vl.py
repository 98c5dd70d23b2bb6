"""Qwen2-VL / Qwen2.5-VL: image grids from ``image_grid_thw`` and 3-D M-RoPE positions; no [CLS].

Every kept token keeps its (t, h, w) position (the runner gathers the 3-D ``position_ids``). Under
``generate`` the image grids come from those positions, and a decode step over a shortened cache gets
its true positions here, since the model would count them from the cache length.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .base import Video, VLMFamily, runs


class Qwen2VL(VLMFamily):
    name = "qwen2-vl"
    model_classes = frozenset({"Qwen2VLModel", "Qwen2_5_VLModel"})

    def __init__(self, outer):
        super().__init__(outer)
        self.video_token_id = outer.config.video_token_id

    def videos(self, ids: Tensor, inputs: dict) -> list[list[Video]]:
        """Each video's (frames, rows, cols) from ``video_grid_thw`` (or, under ``generate``, from its M-RoPE
        positions: distinct temporal positions and the h/w ranges), matched to placeholder runs in order."""
        thw = inputs.get("video_grid_thw")
        m = self.outer.config.vision_config.spatial_merge_size
        if thw is not None:
            grids = [(int(t), int(h) // m, int(w) // m) for t, h, w in thw.tolist()]
        pos = None if thw is not None else inputs.get("position_ids")
        if thw is None and (pos is None or pos.ndim != 3):
            raise ValueError("Qwen2-VL: pass video_grid_thw (or M-RoPE position_ids) with the video features")
        rows, count = [], 0
        for r in range(ids.shape[0]):
            row = []
            for i, j in runs((ids[r] == self.video_token_id).tolist()):
                if thw is None:
                    span = pos[-3:, r, i:j]
                    t = len(torch.unique(span[0]))
                    h, w = (int(span[a].max() - span[a].min()) + 1 for a in (1, 2))
                elif count >= len(grids):
                    raise ValueError("more video placeholder runs than videos in video_grid_thw")
                else:
                    t, h, w = grids[count]
                if t * h * w != j - i:
                    raise ValueError(f"a video run of {j - i} tokens does not match its {t}x{h}x{w} grid")
                row.append(Video(i, t, (h, w), count))
                count += 1
            rows.append(row)
        if thw is not None and count != len(grids):
            raise ValueError(f"{len(grids)} videos given but {count} placeholder runs found")
        return rows

    def image_grids(self, inputs):
        thw = inputs.get("image_grid_thw")
        if thw is None:
            return self._grids_from_mrope(inputs)
        m = self.outer.config.vision_config.spatial_merge_size
        return [(int(t) * int(h) // m, int(w) // m) for t, h, w in thw.tolist()]

    def _grids_from_mrope(self, inputs: dict) -> list[tuple[int, int]]:
        """``generate`` passes no grid, only 3-D positions: each image's rows/cols are its h/w ranges."""
        pos, ids = inputs.get("position_ids"), inputs["input_ids"]
        if pos is None or pos.ndim != 3:
            raise ValueError("Qwen2-VL: pass image_grid_thw (or M-RoPE position_ids) with the image features")
        pos = pos[-3:]  # (t, h, w) rows; a leading text row may precede them
        grids = []
        for r in range(ids.shape[0]):
            for i, j in runs((ids[r] == self.image_token_id).tolist()):
                span = pos[:, r, i:j]
                t, h, w = (int(span[a].max() - span[a].min()) + 1 for a in range(3))
                grids.append((t * h, w))
        return grids

    def decode_positions(self, inputs: dict, seen: int) -> Tensor | None:
        """Without a mask the model derives decode positions from the (shortened) cache length; give
        ``seen`` + step + the rope delta instead (with a mask it counts from the mask, which is right)."""
        deltas = getattr(self.outer, "rope_deltas", None)
        if inputs.get("position_ids") is not None or inputs.get("attention_mask") is not None or deltas is None:
            return None
        ids = inputs.get("input_ids")
        ref = ids if ids is not None else inputs["inputs_embeds"]
        b, q = ref.shape[:2]
        pos = torch.arange(seen, seen + q, device=ref.device).view(1, 1, q).expand(3, b, q)
        return pos + deltas.to(ref.device).view(1, -1, 1)
