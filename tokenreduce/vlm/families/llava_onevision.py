"""LLaVA-OneVision videos: every frame encoded alone, bilinearly pooled to ceil(g/2) x ceil(g/2) tokens, and
one ``image_newline`` token after the whole video (kept, never reduced); 1-D positions. Video methods only,
as for LLaVA-NeXT-Video (:mod:`.llava_next_video`)."""

from __future__ import annotations

import math

from .llava_next_video import FrameGridVideo


class LlavaOnevision(FrameGridVideo):
    name = "llava-onevision"
    model_classes = frozenset({"LlavaOnevisionModel"})
    trailing = 1

    def frame_grid(self):
        vc = self.outer.config.vision_config
        g = vc.image_size // vc.patch_size
        return (math.ceil(g / 2), math.ceil(g / 2))
